"""`RunStore`: everything the inspector reads from a run directory, and only from it.

Reading rules, the inspector's safety and liveness rest on them:
* **Only inside DIR.** Every file is reached from the run directory by a name the store builds
  itself (`step-NNNNNN.jsonl`, `snapshot-*.jsonl`, ...), never from a path a client sent, and is
  resolved and checked to lie inside DIR: a symlink that leaves DIR is ignored, as if absent.
* **Live.** JSON Lines files are followed by byte offset; only whole lines (ending in a newline)
  are consumed, so a half-written last line is left for the next refresh, never an error. A
  complete line that is not JSON is skipped and counted (`skipped_lines`).
* **Cheap to open.** The table needs only `rollouts/index.jsonl` (buffer/rollout_log.py); a
  sample's full record is read on demand by seeking to its byte offset in its step file. Step
  files without index lines (older runs) are summarised once from the file itself.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from slipstream.buffer.browser_json import browser_json, revive_floats
from slipstream.buffer.rollout_log import INDEX_NAME, index_row
from slipstream.errors import SlipstreamError

_STEP_FILE = re.compile(r"^step-\d{6,}\.jsonl$")
_SNAPSHOT_FILE = re.compile(r"^snapshot-(step\d{6,}|final)\.jsonl$")
_REFRESH_EVERY_S = 0.5
_SETTLE_S = 3.0
_FILE_FIELD = re.compile(rb'"file": "(step-\d{6,}\.jsonl)"')


class JsonlFollower:
    """Reads the complete lines appended to one file since the last call."""

    def __init__(self, store: RunStore, relative: str) -> None:
        self._store, self._relative = store, relative
        self._offset = 0
        self._size = -1

    def new_lines(self) -> list[bytes]:
        """The complete lines appended since the last call, as bytes (newline stripped)."""
        path = self._store.safe_path(self._relative)
        if path is None:
            return []
        size = path.stat().st_size
        if size < self._offset:               # rewritten from scratch: start over
            self._offset = 0
        if size == self._offset:
            return []
        with path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read(size - self._offset)
        complete = data[: data.rfind(b"\n") + 1]   # a half-written last line waits
        self._offset += len(complete)
        return [line for line in complete.split(b"\n") if line.strip()]

    def new_rows(self) -> list[dict[str, Any]]:
        """`new_lines` parsed; a complete line that is not a JSON object is skipped, counted."""
        return [row for row in map(self._store.parse_line, self.new_lines()) if row is not None]


class RunStore:
    """A read-only, live view of one run directory."""

    def __init__(self, directory: str | Path) -> None:
        path = Path(directory)
        if not path.exists():
            raise SlipstreamError(f"run directory {directory} does not exist")
        if not path.is_dir():
            raise SlipstreamError(f"{directory} is not a directory")
        self.root = path.resolve()
        # A model's folder has a config.json too: only slipstream's own (with a trainer
        # section) marks a run that has not logged a step yet.
        if not (any(self.safe_path(m, allow_dir=True) for m in ("metrics.jsonl", "rollouts"))
                or self._has_run_config()):
            raise SlipstreamError(f"{directory} is not a run directory (no metrics.jsonl, "
                                  "rollouts/ or slipstream config.json)")
        self.skipped_lines = 0
        self.config = self._read_config()
        # Index lines as read (what the browser gets, unparsed: it parses them itself), and the
        # same lines parsed into rows on first use (queries, lookups by id), so opening a run
        # costs one read of the index, not 25,000 json.loads.
        self.index_lines: list[bytes] = []
        self._rows: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self._indexed_files: set[bytes] = set()
        self._summarised_files: set[str] = set()
        self._index = JsonlFollower(self, f"rollouts/{INDEX_NAME}")
        self._metrics = JsonlFollower(self, "metrics.jsonl")
        self._lock = threading.RLock()
        self._refreshed_at = 0.0
        self.refresh(force=True)

    def _has_run_config(self) -> bool:
        path = self.safe_path("config.json")
        try:
            config = json.loads(path.read_text()) if path else None
        except (OSError, ValueError):
            return False
        return isinstance(config, dict) and "trainer" in config and "rollout" in config

    # -- paths -----------------------------------------------------------------------------
    def safe_path(self, relative: str, allow_dir: bool = False) -> Path | None:
        """DIR/relative if it exists and, symlinks resolved, is still inside DIR; else None."""
        candidate = self.root / relative
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if resolved != self.root and self.root not in resolved.parents:
            return None
        if resolved.is_file() or (allow_dir and resolved.is_dir()):
            return resolved
        return None

    def _listing(self, folder: str, pattern: re.Pattern) -> list[str]:
        directory = self.safe_path(folder, allow_dir=True)
        if directory is None or not directory.is_dir():
            return []
        names = sorted(p.name for p in directory.iterdir() if pattern.match(p.name))
        return [n for n in names if self.safe_path(f"{folder}/{n}") is not None]

    def _read_config(self) -> dict[str, Any]:
        path = self.safe_path("config.json")
        if path is None:
            return {}
        try:
            config = json.loads(path.read_text())
        except ValueError:
            return {}
        return config if isinstance(config, dict) else {}

    # -- following ---------------------------------------------------------------------------
    def parse_line(self, line: bytes, count: bool = True) -> dict[str, Any] | None:
        """One JSON Lines line as a dict, or None (counted in `skipped_lines` if `count`)."""
        try:
            row = json.loads(line, object_hook=revive_floats if b'"$float"' in line else None)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            self.skipped_lines += count
            return None
        return row

    def refresh(self, force: bool = False) -> None:
        """Take in what was appended since the last refresh (at most every 0.5 s)."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._refreshed_at < _REFRESH_EVERY_S:
                return
            self._refreshed_at = now
            lines = self._index.new_lines()
            self._indexed_files.update(m.group(1) for m in map(_FILE_FIELD.search, lines) if m)
            self.index_lines.extend(lines)
            for name in self._listing("rollouts", _STEP_FILE):
                if name.encode() not in self._indexed_files and name not in self._summarised_files:
                    self._summarise_step_file(name)
            self.metrics.extend(r for r in self._metrics.new_rows() if "step" in r)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every index row, parsed (the first call parses the whole index)."""
        with self._lock:
            for line in self.index_lines[len(self._rows) + self._unparsable:]:
                row = self.parse_line(line)
                if row is None:
                    self._unparsable += 1
                    continue
                self._rows.append(row)
            return self._rows

    _unparsable = 0                            # index lines that were not JSON objects

    def _summarise_step_file(self, name: str) -> None:
        """Index lines made from a step file that has none (a run from before the index). Only
        once the file has been in place a few seconds: the writer appends a step's index lines
        right after renaming its file, and they, not a summary, should win that race."""
        path = self.safe_path(f"rollouts/{name}")
        if path is None or time.time() - path.stat().st_mtime < _SETTLE_S:
            return
        self._summarised_files.add(name)
        offset = 0
        with path.open("rb") as handle:
            for line in handle:
                if line.endswith(b"\n"):
                    try:
                        row = index_row(json.loads(line), name, offset, len(line))
                        self.index_lines.append(browser_json(row).encode())
                    except (ValueError, KeyError, TypeError):
                        self.skipped_lines += 1
                offset += len(line)

    # -- reading -----------------------------------------------------------------------------
    def _lines_where(self, key: str, value: str) -> list[dict[str, Any]]:
        """The index rows whose `key` is `value`, found in the raw lines without parsing the
        rest (the writer's json.dumps puts `"key": value` in this exact form)."""
        needle = f'"{key}": {json.dumps(value)},'.encode()
        with self._lock:
            lines = [line for line in self.index_lines if needle in line]
        rows = [self.parse_line(line, count=False) for line in lines]
        return [r for r in rows if r is not None and r.get(key) == value]

    def find_row(self, sample_id: str, step: int | None = None) -> dict[str, Any] | None:
        """The index row of a sample (at `step`, or its latest), or None."""
        matches = [r for r in self._lines_where("id", sample_id)
                   if step is None or r.get("step") == step]
        return matches[-1] if matches else None

    def sample(self, sample_id: str, step: int | None = None) -> dict[str, Any] | None:
        """The full `TrainedSample` record of one indexed sample, or None."""
        row = self.find_row(sample_id, step)
        if row is None or not _STEP_FILE.match(str(row.get("file", ""))):
            return None
        path = self.safe_path(f"rollouts/{row['file']}")
        if path is None:
            return None
        with path.open("rb") as handle:
            handle.seek(int(row["offset"]))
            line = handle.read(int(row["bytes"]))
        try:
            record = json.loads(line)
        except ValueError:
            return None
        if record.get("sample", {}).get("sample_id") != sample_id:
            return None
        return record

    def group(self, group_id: str) -> list[dict[str, Any]]:
        return self._lines_where("group", group_id)

    def snapshot_names(self) -> list[str]:
        names = self._listing("buffer", _SNAPSHOT_FILE)
        # Steps in order, the final snapshot last.
        return sorted(names, key=lambda n: (n == "snapshot-final.jsonl", n))

    def snapshot(self, name: str) -> list[dict[str, Any]]:
        """The rows of one snapshot, by a name from `snapshot_names` (anything else: [])."""
        if name not in self.snapshot_names():
            return []
        follower = JsonlFollower(self, f"buffer/{name}")
        return [_snapshot_summary(row) for row in follower.new_rows()]

    def evictions(self) -> list[dict[str, Any]]:
        return JsonlFollower(self, "buffer/evictions.jsonl").new_rows()

    def run_info(self) -> dict[str, Any]:
        """What the page needs first; cheap (no parse of the index)."""
        return {"name": self.root.name, "deterministic": self.config.get("deterministic") is True,
                "max_lag": (self.config.get("buffer") or {}).get("max_lag"),
                "samples": len(self.index_lines), "metric_rows": len(self.metrics),
                "skipped_lines": self.skipped_lines, "config": self.config}

    def deterministic_banner(self) -> dict[str, int] | None:
        """In a deterministic run, the tokens compared and those whose gap is not exactly 0
        (rollout_log.deterministic_gap_tokens); None in other runs."""
        if self.config.get("deterministic") is not True:
            return None
        rows = self.rows
        return {"tokens": sum(int(r.get("det_tokens") or 0) for r in rows),
                "nonzero": sum(int(r.get("det_nonzero") or 0) for r in rows)}

    def buffer_info(self, name: str | None) -> dict[str, Any]:
        names = self.snapshot_names()
        chosen = name if name in names else (names[-1] if names else None)
        evictions = self.evictions()
        return {"snapshots": names, "snapshot": chosen,
                "rows": self.snapshot(chosen) if chosen else [],
                "evictions": evictions,
                "eviction_counts": dict(Counter(str(e.get("reason")) for e in evictions))}


def _snapshot_summary(row: dict[str, Any]) -> dict[str, Any]:
    sample = row.get("sample") or {}
    versions = sample.get("versions_T") or []
    return {"ticket": row.get("ticket"), "learner_version": row.get("learner_version"),
            "age": row.get("age"), "max_lag": row.get("max_lag"),
            "reuse": row.get("reuse_count", 0), "id": sample.get("sample_id"),
            "group": sample.get("group_id"), "len": len(versions),
            "version_min": min(versions, default=None),
            "version_max": max(versions, default=None), "reward": sample.get("reward"),
            "text": str(sample.get("completion_text", ""))[:200]}
