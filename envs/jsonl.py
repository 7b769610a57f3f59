"""A dataset env over a JSON Lines file: one problem per line, field names configurable.

Choices:
- GSM8K's answer format is understood: the reference is the text after the last "####", with
  thousands separators removed ("#### 1,234" -> "1234"). An answer without "####" is used as is
  (stripped of surrounding whitespace), so MATH-style answers such as "(1, 2)" keep their commas.
- Malformed rows (not UTF-8, invalid JSON, not an object, a missing, empty or non-string field)
  are skipped and counted in `skipped_rows`, and reported once, in one line on stderr, when the
  file is loaded: a dataset with a few bad rows still trains, and the user sees that it has them.
  A missing or empty file, or one without a single usable row, is a `SlipstreamError`.
- `prompt(index)` walks a permutation of the rows seeded by (seed, epoch), epoch = index // rows:
  every row once per epoch, a fresh order each epoch, and any index computable on its own.
- `held_out` returns the first rows in file order, which the training stream also visits: a
  dataset env has no split of its own. Point `path` at a held-out file to evaluate on unseen rows.
- Prompt ids carry the row's line number in the file ("gsm8k_sample-000017"), so a logged prompt
  can be found in the file.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from slipstream.envs.base import Prompt, check_index
from slipstream.errors import SlipstreamError

_REPORTED_REASONS = 3          # reasons quoted in the one-line skip report
_CACHED_EPOCHS = 2             # workers near an epoch boundary ask for both sides of it
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_BOM = b"\xef\xbb\xbf"


def sample_gsm8k_path() -> str:
    """The small GSM8K-style sample shipped with slipstream (self-written word problems)."""
    return str(Path(__file__).parent / "data" / "gsm8k_sample.jsonl")


class JsonlEnvConfig(BaseModel):
    """Problems read from a JSON Lines file (GSM8K's format by default)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["jsonl"] = Field("jsonl", description="Selects this env.")
    path: str = Field(default_factory=sample_gsm8k_path, description=(
        "The JSON Lines file; by default the GSM8K-style sample shipped with slipstream."))
    prompt_field: str = Field("question", min_length=1, description="Field holding the problem.")
    answer_field: str = Field("answer", min_length=1, description=(
        "Field holding the answer: GSM8K's 'reasoning #### 42' or a plain answer."))
    system_prompt: str | None = Field(None, description=(
        "System message put before every problem; None or empty: no system message."))
    prompt_suffix: str = Field("", description=(
        "Text appended to every problem, e.g. an instruction on how to state the answer."))


def parse_reference(answer: str) -> str:
    """The gold answer of an answer field: after the last '####' if there is one, else as is."""
    if "####" not in answer:
        return answer.strip()
    return _THOUSANDS_COMMA.sub("", answer.rsplit("####", 1)[1].strip())


def _parse_row(raw: bytes, config: JsonlEnvConfig) -> tuple[str, str]:
    """(problem text, reference) of one line; ValueError with a short reason if malformed."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except json.JSONDecodeError:
        raise ValueError("invalid JSON") from None
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    values = []
    for name in (config.prompt_field, config.answer_field):
        if name not in row:
            raise ValueError(f"missing field '{name}'")
        if not isinstance(row[name], str):
            raise ValueError(f"field '{name}' is not a string")
        if not row[name].strip():
            raise ValueError(f"empty field '{name}'")
        values.append(row[name])
    reference = parse_reference(values[1])
    if not reference:
        raise ValueError(f"nothing after '####' in field '{config.answer_field}'")
    return values[0], reference


def _read_lines(path: Path) -> list[bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SlipstreamError(f"dataset file {path} not found") from None
    except IsADirectoryError:
        raise SlipstreamError(f"dataset path {path} is a directory, not a file") from None
    except OSError as error:
        raise SlipstreamError(f"cannot read dataset file {path}: {error.strerror}") from None
    # Bytes, split before decoding: one row with bad bytes is then one skipped row, not a bad file.
    return data.removeprefix(_BOM).splitlines()


class JsonlEnv:
    """Rows of a JSON Lines file as prompts; see the module docstring for the choices."""

    def __init__(self, config: JsonlEnvConfig, seed: int) -> None:
        self.config = config
        self.seed = seed
        self.name = Path(config.path).stem
        self.rows, self.skipped_rows = self._load(Path(config.path))
        self._orders: dict[int, list[int]] = {}

    def _load(self, path: Path) -> tuple[list[tuple[int, str, str]], int]:
        """Usable rows as (line number, text, reference), and how many rows were skipped."""
        rows, reasons, total = [], [], 0
        for number, raw in enumerate(_read_lines(path), start=1):
            if not raw.strip():
                continue  # blank lines (a trailing newline, spacing) are not rows
            total += 1
            try:
                rows.append((number, *_parse_row(raw, self.config)))
            except ValueError as error:
                reasons.append(f"line {number}: {error}")
        more = "; ..." if len(reasons) > _REPORTED_REASONS else ""
        quoted = "; ".join(reasons[:_REPORTED_REASONS]) + more
        if total == 0:
            raise SlipstreamError(f"dataset file {path} is empty")
        if not rows:
            raise SlipstreamError(f"dataset file {path} has no usable row: all {total} are "
                                  f"malformed ({quoted})")
        if reasons:
            print(f"slipstream: skipped {len(reasons)} of {total} rows in {path} ({quoted})",
                  file=sys.stderr)
        return rows, len(reasons)

    def prompt(self, index: int) -> Prompt:
        check_index(index)
        epoch, position = divmod(index, len(self.rows))
        return self._make(self._order(epoch)[position])

    def held_out(self, count: int) -> list[Prompt]:
        """The first `count` rows in file order (they are in the training stream too)."""
        return [self._make(i) for i in range(min(count, len(self.rows)))]

    def _order(self, epoch: int) -> list[int]:
        # Shuffling costs O(rows); caching the latest epochs makes a prompt O(1) on average.
        if epoch not in self._orders:
            order = list(range(len(self.rows)))
            random.Random(f"{self.seed}:epoch{epoch}").shuffle(order)
            while len(self._orders) >= _CACHED_EPOCHS:
                del self._orders[min(self._orders)]
            self._orders[epoch] = order
        return self._orders[epoch]

    def _make(self, row_index: int) -> Prompt:
        line, text, reference = self.rows[row_index]
        messages = []
        if self.config.system_prompt:
            messages.append({"role": "system", "content": self.config.system_prompt})
        messages.append({"role": "user", "content": text + self.config.prompt_suffix})
        return Prompt(prompt_id=f"{self.name}-{line:06d}", messages=tuple(messages),
                      reference=reference,
                      metadata={"env": "jsonl", "dataset": self.name, "line": line})
