"""`RunStore`: everything the inspector reads from a run directory, and only from it.

Reading rules, the inspector's safety and liveness rest on them:
* **Only inside DIR.** Every file is reached from the run directory by a name the store builds
  itself (`step-NNNNNN.jsonl`, `snapshot-*.jsonl`, ...), never from a path a client sent, and is
  resolved and checked to lie inside DIR: a symlink that leaves DIR is ignored, as if absent.
* **Nothing on disk is trusted.** Every row is checked where it enters the store
  (validate.py): a line that is not a JSON object, a field of the wrong type, an index row whose
  `file` is not a step file in rollouts/ or whose `offset` + `bytes` run past its end, a second
  row for the same sample and step: each is skipped and counted by file and reason (`skipped`,
  in /api/run). So every row served, to the page and the API alike, is well formed and appears
  once. A step file changed after it was indexed is caught when a record is read: the record
  must be whole, well formed and the sample the index names, else `DataError`, which the server
  answers with a readable JSON error.
* **Live.** JSON Lines files are followed by byte offset (jsonl.py); a half-written last line is
  left for the next refresh. An index or metrics file rewritten (a resume rewinds both) is read
  again from its start, and `generation` goes up so the page knows to reload its rows.
* **Cheap to open.** The table needs only `rollouts/index.jsonl` (buffer/rollout_log.py); a
  sample's full record is read on demand by seeking to its byte offset in its step file. Step
  files without index lines (older runs) are summarised once from the file itself.
* **Derived views travel with the record.** A sample's record is served as written plus
  `teacher_view` (teacher.py: the teacher-student gap of a distillation sample, or why it has
  none), computed here so the live page and the --html export get the same numbers.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slipstream.buffer.browser_json import browser_json
from slipstream.buffer.rollout_log import INDEX_NAME, index_row
from slipstream.errors import SlipstreamError
from slipstream.inspector.jsonl import MAX_LINE_BYTES, JsonlFollower, parse_line
from slipstream.inspector.teacher import teacher_view
from slipstream.inspector.validate import (
    STEP_FILE, config_max_lag, eviction_problem, index_row_problem, metrics_row_problem,
    record_problem, snapshot_row_problem)

_SNAPSHOT_FILE = re.compile(r"^snapshot-(step\d{6,}|final)\.jsonl$")
_INDEX = f"rollouts/{INDEX_NAME}"
_METRICS = "metrics.jsonl"
_CONFIG = "config.json"
_MAX_CONFIG_BYTES = 16 * 2**20
_REFRESH_EVERY_S = 0.5
_SETTLE_S = 3.0
_NOT_JSON = "not a JSON object"
_TOO_LONG = f"a line longer than {MAX_LINE_BYTES} bytes"
_DUPLICATE = "a second row for the same sample and step"


class DataError(SlipstreamError):
    """Files of the run disagree (an index row and the step file it points into): the server
    answers with `status` and this message, which says what is wrong where."""

    status = 500


class RunStore:
    """A read-only, live view of one run directory."""

    def __init__(self, directory: str | Path) -> None:
        path = Path(directory)
        if not path.exists():
            raise SlipstreamError(f"run directory {directory} does not exist")
        if not path.is_dir():
            raise SlipstreamError(f"{directory} is not a directory")
        self.root = path.resolve()
        # Skipped lines by file, then by reason: a file read again from its start (rewritten)
        # drops its own counts, so the totals describe the files as they are now.
        self._skipped: dict[str, Counter[str]] = {}
        self.config = self._read_config()
        # A model's folder has a config.json too: only slipstream's own (with a trainer
        # section) marks a run that has not logged a step yet.
        if not (any(self.safe_path(m, allow_dir=True) for m in (_METRICS, "rollouts"))
                or ("trainer" in self.config and "rollout" in self.config)):
            raise SlipstreamError(f"{directory} is not a run directory (no metrics.jsonl, "
                                  "rollouts/ or slipstream config.json)")
        self.max_lag = config_max_lag(self.config)
        self.generation = 0
        self._lock = threading.RLock()
        self._index = JsonlFollower(self._locator(_INDEX))
        self._metrics = JsonlFollower(self._locator(_METRICS))
        self._clear_index()
        self._clear_metrics()
        self._refreshed_at = 0.0
        self.refresh(force=True)

    def _clear_index(self) -> None:
        # Index lines as read (what the browser gets, unparsed: it parses them itself) and the
        # same rows parsed, with lookups by (id, step), id and group.
        self.index_lines: list[bytes] = []
        self._rows: list[dict[str, Any]] = []
        self._by_key: dict[tuple[str, int], dict[str, Any]] = {}
        self._by_id: dict[str, list[dict[str, Any]]] = {}
        self._by_group: dict[str, list[dict[str, Any]]] = {}
        self._indexed_files: set[str] = set()
        self._summarised_files: set[str] = set()
        for source in [s for s in self._skipped if s.startswith("rollouts/")]:
            del self._skipped[source]

    def _clear_metrics(self) -> None:
        self.metrics: list[dict[str, Any]] = []
        self._metric_steps: set[int] = set()
        self._skipped.pop(_METRICS, None)

    # -- paths -----------------------------------------------------------------------------
    def safe_path(self, relative: str, allow_dir: bool = False) -> Path | None:
        """DIR/relative if it exists and, symlinks resolved, is still inside DIR; else None."""
        candidate = self.root / relative
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            return None
        if resolved != self.root and self.root not in resolved.parents:
            return None
        if resolved.is_file() or (allow_dir and resolved.is_dir()):
            return resolved
        return None

    def _locator(self, relative: str) -> Callable[[], Path | None]:
        return lambda: self.safe_path(relative)

    def _listing(self, folder: str, pattern: re.Pattern) -> list[str]:
        directory = self.safe_path(folder, allow_dir=True)
        try:
            names = sorted(p.name for p in directory.iterdir() if pattern.match(p.name)) \
                if directory is not None else []
        except OSError:                       # removed or unreadable meanwhile: nothing yet
            return []
        return [n for n in names if self.safe_path(f"{folder}/{n}") is not None]

    def _read_config(self) -> dict[str, Any]:
        path = self.safe_path(_CONFIG)
        if path is None:
            return {}
        try:
            too_large = path.stat().st_size > _MAX_CONFIG_BYTES
            config = None if too_large else json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            config = None
        if not isinstance(config, dict):
            self._skip(_CONFIG, _NOT_JSON)
            return {}
        return config

    # -- skipped lines ---------------------------------------------------------------------
    def _skip(self, source: str, reason: str, count: int = 1) -> None:
        if count:
            self._skipped.setdefault(source, Counter())[reason] += count

    @property
    def skipped_lines(self) -> int:
        """Lines skipped in the files the store follows (index, step files, metrics, config)."""
        return sum(sum(reasons.values()) for reasons in self._skipped.values())

    def skipped(self) -> dict[str, int]:
        """Skipped lines as {"FILE: reason": count}."""
        return {f"{source}: {reason}": n for source, reasons in sorted(self._skipped.items())
                for reason, n in sorted(reasons.items())}

    # -- following ---------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        """Take in what was appended since the last refresh (at most every 0.5 s)."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._refreshed_at < _REFRESH_EVERY_S:
                return
            self._refreshed_at = now
            self._follow_index()
            self._follow_metrics()

    def _new_lines(self, follower: JsonlFollower, source: str,
                   clear: Callable[[], None]) -> list[tuple[int, bytes]]:
        """The follower's new lines; a file rewritten since (a resume's rewind) first drops what
        was taken from it and starts a new generation, so the page reloads instead of
        appending."""
        entries, too_long, rewritten = follower.new_lines()
        if rewritten:
            clear()
            self.generation += 1
        self._skip(source, _TOO_LONG, too_long)
        return entries

    def _follow_index(self) -> None:
        entries = self._new_lines(self._index, _INDEX, self._clear_index)
        sizes: dict[str, int | None] = {}     # step file sizes, looked up once per refresh
        for _, line in entries:
            row, browser_ready = parse_line(line)
            if row is None:
                self._skip(_INDEX, _NOT_JSON)
                continue
            if isinstance(row.get("file"), str):
                self._indexed_files.add(row["file"])
            # A line the browser's JSON.parse would reject (a NaN literal) is served re-encoded.
            self._add_row(row, line if browser_ready else None, _INDEX, sizes)
        for name in self._listing("rollouts", STEP_FILE):
            if name not in self._indexed_files and name not in self._summarised_files:
                self._summarise_step_file(name, sizes)

    def _add_row(self, row: dict[str, Any], line: bytes | None, source: str,
                 sizes: dict[str, int | None]) -> None:
        """The one way an index row enters the store: checked, placed, unique, or counted."""
        problem = index_row_problem(row) or self._placement_problem(row, sizes)
        if problem is None and (row["id"], row["step"]) in self._by_key:
            problem = _DUPLICATE
        if problem is not None:
            self._skip(source, problem)
            return
        self.index_lines.append(line if line is not None else browser_json(row).encode())
        self._rows.append(row)
        self._by_key[(row["id"], row["step"])] = row
        self._by_id.setdefault(row["id"], []).append(row)
        self._by_group.setdefault(row["group"], []).append(row)

    def _placement_problem(self, row: dict[str, Any], sizes: dict[str, int | None]) -> str | None:
        name = row["file"]
        if name not in sizes:
            path = self.safe_path(f"rollouts/{name}")
            try:
                sizes[name] = path.stat().st_size if path is not None else None
            except OSError:
                sizes[name] = None
        if sizes[name] is None:
            return "'file' names no step file in rollouts/"
        if row["offset"] + row["bytes"] > sizes[name]:
            return "'offset' + 'bytes' run past the end of the step file"
        return None

    def _summarise_step_file(self, name: str, sizes: dict[str, int | None]) -> None:
        """Index rows made from a step file that has none (a run from before the index). Only
        once the file has been in place a few seconds: the writer appends a step's index lines
        right after renaming its file, and they, not a summary, should win that race."""
        source = f"rollouts/{name}"
        path = self.safe_path(source)
        try:
            if path is None or time.time() - path.stat().st_mtime < _SETTLE_S:
                return
        except OSError:
            return
        self._summarised_files.add(name)
        entries, too_long, _ = JsonlFollower(lambda: path).new_lines()
        self._skip(source, _TOO_LONG, too_long)
        for offset, line in entries:
            record, _ = parse_line(line)
            problem = record_problem(record)
            if problem is not None:
                self._skip(source, problem)
                continue
            try:
                row = index_row(record, name, offset, len(line) + 1)
            except (KeyError, TypeError, ValueError, OverflowError):
                self._skip(source, "the record lacks a field the index needs")
                continue
            self._add_row(row, None, source, sizes)

    def _follow_metrics(self) -> None:
        entries = self._new_lines(self._metrics, _METRICS, self._clear_metrics)
        for _, line in entries:
            row, _ = parse_line(line)
            problem = _NOT_JSON if row is None else metrics_row_problem(row)
            if problem is None and row["step"] in self._metric_steps:
                problem = "a second row for the same step"
            if problem is not None:
                self._skip(_METRICS, problem)
                continue
            self._metric_steps.add(row["step"])
            self.metrics.append(row)

    # -- reading -----------------------------------------------------------------------------
    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every index row that passed its checks, in index order."""
        with self._lock:
            return self._rows

    def find_row(self, sample_id: str, step: int | None = None) -> dict[str, Any] | None:
        """The index row of a sample (at `step`, or its latest), or None."""
        with self._lock:
            if step is not None:
                return self._by_key.get((sample_id, step))
            rows = self._by_id.get(sample_id)
            return rows[-1] if rows else None

    def group(self, group_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._by_group.get(group_id, ()))

    def sample(self, sample_id: str, step: int | None = None) -> dict[str, Any] | None:
        """The full `TrainedSample` record of one indexed sample, with its `teacher_view`;
        None if it is not indexed; DataError if its step file no longer holds it where the
        index says."""
        row = self.find_row(sample_id, step)
        if row is None:
            return None
        what = f"sample {sample_id} of step {row['step']}"
        where = f"rollouts/{row['file']}"
        start, end = row["offset"], row["offset"] + row["bytes"]
        path = self.safe_path(where)
        if path is None:
            raise DataError(f"{what}: {where} is no longer in the run directory")
        try:
            with path.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if end > size:
                    raise DataError(f"{what}: the index puts it at bytes {start}..{end} of "
                                    f"{where}, which now has {size} bytes (rewritten shorter)")
                handle.seek(start)
                line = handle.read(row["bytes"])
        except OSError as error:
            raise DataError(f"{what}: cannot read {where}: {error.strerror}") from None
        record, _ = parse_line(line)
        problem = record_problem(record)
        if problem is not None:
            raise DataError(f"{what}: bytes {start}..{end} of {where} are not its record "
                            f"({problem}); the file changed after it was indexed")
        found = (record["sample"]["sample_id"], record["step"])
        if found != (sample_id, row["step"]):
            raise DataError(f"{what}: bytes {start}..{end} of {where} hold sample "
                            f"{found[0][:80]!r} of step {found[1]}; the file changed after it "
                            "was indexed")
        record["teacher_view"] = teacher_view(record)
        return record

    def snapshot_names(self) -> list[str]:
        names = self._listing("buffer", _SNAPSHOT_FILE)
        # Steps in order, the final snapshot last.
        return sorted(names, key=lambda n: (n == "snapshot-final.jsonl", n))

    def _buffer_rows(self, name: str, problem_of: Callable[[dict], str | None],
                     key_of: Callable[[dict], Any]) -> tuple[list[dict[str, Any]], int]:
        """The good rows of buffer/NAME, each once (by `key_of`), and how many lines were
        skipped. Read whole per request, so counted per answer, not in the store's totals."""
        entries, skipped, _ = JsonlFollower(self._locator(f"buffer/{name}")).new_lines()
        rows, seen = [], set()
        for _, line in entries:
            row, _ = parse_line(line)
            if row is None or problem_of(row) is not None or key_of(row) in seen:
                skipped += 1
                continue
            seen.add(key_of(row))
            rows.append(row)
        return rows, skipped

    def _snapshot(self, name: str) -> tuple[list[dict[str, Any]], int]:
        if name not in self.snapshot_names():
            return [], 0
        rows, skipped = self._buffer_rows(name, snapshot_row_problem,
                                          lambda row: row["sample"]["sample_id"])
        return [_snapshot_summary(row) for row in rows], skipped

    def snapshot(self, name: str) -> list[dict[str, Any]]:
        """The rows of one snapshot, by a name from `snapshot_names` (anything else: [])."""
        return self._snapshot(name)[0]

    def evictions(self) -> list[dict[str, Any]]:
        return self._buffer_rows("evictions.jsonl", eviction_problem,
                                 lambda row: (row["group_id"], row["ticket"]))[0]

    def run_info(self) -> dict[str, Any]:
        """What the page needs first; cheap. `skipped_lines` counts the lines skipped in the
        index, step files, metrics and config; `skipped` names the file and reason of each."""
        with self._lock:
            return {"name": self.root.name,
                    "deterministic": self.config.get("deterministic") is True,
                    "max_lag": self.max_lag, "samples": len(self.index_lines),
                    "metric_rows": len(self.metrics), "skipped_lines": self.skipped_lines,
                    "skipped": self.skipped(), "generation": self.generation,
                    "config": self.config}

    def deterministic_banner(self) -> dict[str, int] | None:
        """In a deterministic run, the tokens compared and those whose gap is not exactly 0
        (rollout_log.deterministic_gap_tokens); None in other runs."""
        if self.config.get("deterministic") is not True:
            return None
        rows = self.rows
        return {"tokens": sum(r.get("det_tokens") or 0 for r in rows),
                "nonzero": sum(r.get("det_nonzero") or 0 for r in rows)}

    def buffer_info(self, name: str | None) -> dict[str, Any]:
        """One snapshot's rows and the evictions; `skipped_lines`: lines of the two files
        skipped as malformed or repeated."""
        names = self.snapshot_names()
        chosen = name if name in names else (names[-1] if names else None)
        rows, skipped = self._snapshot(chosen) if chosen else ([], 0)
        evictions, skipped_evictions = self._buffer_rows(
            "evictions.jsonl", eviction_problem, lambda row: (row["group_id"], row["ticket"]))
        return {"snapshots": names, "snapshot": chosen, "rows": rows,
                "evictions": evictions, "skipped_lines": skipped + skipped_evictions,
                "eviction_counts": dict(Counter(e["reason"] for e in evictions))}


def _snapshot_summary(row: dict[str, Any]) -> dict[str, Any]:
    sample = row["sample"]
    versions = sample.get("versions_T") or []
    # A replayed group is bounded by the replay's max_age, a waiting one by max_lag.
    replayed = row.get("held") == "replay" and isinstance(row.get("max_age"), int)
    return {"ticket": row.get("ticket"), "learner_version": row.get("learner_version"),
            "age": row.get("age"), "max_lag": row["max_age"] if replayed else row.get("max_lag"),
            "held": "replay" if replayed else "waiting",
            "reuse": row.get("reuse_count", 0), "id": sample["sample_id"],
            "group": sample.get("group_id"), "len": len(versions),
            "version_min": min(versions, default=None),
            "version_max": max(versions, default=None), "reward": sample.get("reward"),
            "text": str(sample.get("completion_text") or "")[:200]}
