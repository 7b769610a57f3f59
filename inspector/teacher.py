"""The teacher-student gap of one sample: what the token view's "teacher" colouring draws.

A distillation run's samples carry the teacher's logprob of every generated token
(buffer/records.py `Sample.teacher_*`). Per token, teacher_gap = teacher logprob - student
logprob, the student being the trainer's logprob (what the learner's weights gave the token, the
side a distillation objective moves) where the record has one per token, else the sampler's.
Positive: the teacher likes the token more than the student does; negative: less.

It is computed here, once, and attached to the record the store serves (`teacher_view`), so the
page, the --html export and the tests share one definition and the page never reads the raw
teacher fields. Those come from disk like everything else (store.py: nothing on disk is
trusted), so they are checked here: a malformed one makes the view unavailable with a reason
that names the field, while the rest of the sample stays readable (its RL numbers do not depend
on the teacher's). Teacher ids, errors and member names are user strings: served cut to
`MAX_TEXT` characters and drawn by the page with textContent only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from slipstream.inspector.validate import is_int, is_number

# Members whose per-token logprobs are served: an ensemble has a handful; a damaged or hostile
# record naming thousands would otherwise multiply the answer and the tooltip by as many.
MAX_MEMBERS = 16
MAX_TEXT = 200
_MALFORMED = "The teacher fields of this sample are malformed ({}), so it has no teacher view."


class _Malformed(ValueError):
    pass


def teacher_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """The teacher colouring of one `TrainedSample` JSON record (already through
    validate.record_problem): `available` with the per-token arrays, or not, with `reason`
    (and `malformed` when a teacher field is damaged rather than absent)."""
    sample = record.get("sample")
    sample = sample if isinstance(sample, Mapping) else {}
    try:
        header = _header(sample)
        n = len(sample.get("completion_ids_T") or [])
        teacher = _floats(sample, "teacher_logprobs_T", n)
        top1, top1_logprob = _top1(sample, n)
        members, left_out = _members(sample, n)
        source, student = _student(record, sample, n) if teacher else ("", [])
    except _Malformed as problem:
        return {**_header(sample, strict=False), "available": False, "malformed": True,
                "reason": _MALFORMED.format(problem)}
    if not teacher:
        return {**header, "available": False, "malformed": False,
                "reason": _absent_reason(header)}
    gaps = [t - s for t, s in zip(teacher, student)]
    measured = [abs(g) for g in gaps if not math.isnan(g)]
    return {**header, "available": True, "malformed": False, "reason": "", "student": source,
            "teacher_T": teacher, "student_T": student, "gap_T": gaps,
            "top1_T": top1, "top1_logprob_T": top1_logprob,
            "members": members, "members_left_out": left_out,
            # A NaN score makes the mean NaN (it should be seen, not averaged away); the
            # largest |gap| is over the tokens that have a number.
            "mean_gap": sum(gaps) / len(gaps),
            "max_abs_gap": max(measured, default=math.nan)}


def _text(value: Any) -> str:
    return value[:MAX_TEXT] + ("…" if len(value) > MAX_TEXT else "")


def _header(sample: Mapping[str, Any], strict: bool = True) -> dict[str, Any]:
    """Who scored the sample: id, weight version (0: frozen) and why it has no score. With
    `strict` a field of the wrong type raises; without, it is left out (to explain the rest)."""
    teacher_id, version, error = (sample.get("teacher_id"), sample.get("teacher_version"),
                                  sample.get("teacher_error"))
    if strict and not (isinstance(teacher_id, str) or teacher_id is None):
        raise _Malformed("'teacher_id' is not a string")
    if strict and not (is_int(version) or version is None):
        raise _Malformed("'teacher_version' is not an integer")
    if strict and not (isinstance(error, str) or error is None):
        raise _Malformed("'teacher_error' is not a string")
    return {"id": _text(teacher_id) if isinstance(teacher_id, str) else "",
            "version": version if is_int(version) else None,
            "error": _text(error) if isinstance(error, str) else None}


def _absent_reason(header: Mapping[str, Any]) -> str:
    if header["error"] is not None:
        return f"No teacher scores for this sample: the teacher failed ({header['error']})."
    if header["id"]:
        return f"No teacher scores for this sample: teacher {header['id']} recorded none."
    return ("No teacher scores for this sample: no teacher scored it (its record has no "
            "teacher_logprobs_T).")


def _float(value: Any) -> float:
    if not is_number(value):
        raise _Malformed("a value is not a number")
    try:
        return float(value)                  # a JSON integer too large for a float: damage
    except OverflowError:
        raise _Malformed("a value is out of a float's range") from None


def _floats(holder: Mapping[str, Any], name: str, n: int) -> list[float]:
    """holder[name] as floats: [] when absent, null or empty (no score), else one per token."""
    value = holder.get(name)
    if not value:
        return []
    if not isinstance(value, list) or len(value) != n:
        raise _Malformed(f"'{name}' does not have one entry per generated token")
    try:
        return [_float(v) for v in value]
    except _Malformed:
        raise _Malformed(f"'{name}' is not a list of numbers") from None


def _top1(sample: Mapping[str, Any], n: int) -> tuple[list | None, list | None]:
    """The teacher's best token id and its logprob per position (None where its top-k list is
    empty), or None when the record has no top-k lists."""
    out = []
    for name, test in (("teacher_topk_ids_T_K", is_int), ("teacher_topk_logprobs_T_K", None)):
        rows = sample.get(name)
        if not rows:
            out.append(None)
            continue
        if not isinstance(rows, list) or len(rows) != n or \
                not all(isinstance(row, list) for row in rows):
            raise _Malformed(f"'{name}' does not have one list per generated token")
        firsts = [row[0] if row else None for row in rows]
        if test is not None:
            if not all(v is None or test(v) for v in firsts):
                raise _Malformed(f"'{name}' is not lists of integers")
            out.append(firsts)
            continue
        try:
            out.append([None if v is None else _float(v) for v in firsts])
        except _Malformed:
            raise _Malformed(f"'{name}' is not lists of numbers") from None
    return out[0], out[1]


def _members(sample: Mapping[str, Any], n: int) -> tuple[list[dict[str, Any]], int]:
    """An ensemble's members in the record's order: name, weight for this sample (None if not
    recorded) and own logprobs; at most MAX_MEMBERS, and how many more were left out. Member
    names are never put in a message (a reason must stay short, whatever a record holds)."""
    parts, weights = sample.get("teacher_parts") or {}, sample.get("teacher_weights") or {}
    if not isinstance(parts, Mapping) or not isinstance(weights, Mapping):
        raise _Malformed("'teacher_parts' or 'teacher_weights' is not an object")
    members, scored = [], 0
    for name, logprobs in parts.items():
        try:
            logprobs = _floats(parts, name, n)
            weight = None if weights.get(name) is None else _float(weights[name])
        except _Malformed:
            raise _Malformed("a member of 'teacher_parts' or 'teacher_weights' does not have "
                             "a number per generated token") from None
        scored += bool(logprobs)
        if logprobs and len(members) < MAX_MEMBERS:
            members.append({"name": _text(name), "weight": weight, "logprobs_T": logprobs})
    return members, scored - len(members)


def _student(record: Mapping[str, Any], sample: Mapping[str, Any],
             n: int) -> tuple[str, list[float]]:
    """("trainer", its logprobs) when the record has one per token, else the sampler's."""
    trainer = record.get("trainer_logprobs_T")
    if isinstance(trainer, list) and trainer and len(trainer) == n:
        return "trainer", _floats(record, "trainer_logprobs_T", n)
    sampler = _floats(sample, "sampler_logprobs_T", n)
    if len(sampler) != n:
        raise _Malformed("neither 'trainer_logprobs_T' nor 'sampler_logprobs_T' has one entry "
                         "per generated token")
    return "sampler", sampler
