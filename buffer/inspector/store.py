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

from slipstream.buffer.rollout_log import INDEX_NAME, index_row
from slipstream.errors import SlipstreamError

_STEP_FILE = re.compile(r"^step-\d{6,}\.jsonl$")
_SNAPSHOT_FILE = re.compile(r"^snapshot-(step\d{6,}|final)\.jsonl$")
_REFRESH_EVERY_S = 0.5


class JsonlFollower:
    """Reads the complete lines appended to one file since the last call."""

    def __init__(self, store: RunStore, relative: str) -> None:
        self._store, self._relative = store, relative
        self._offset = 0
        self._size = -1

    def new_rows(self) -> list[dict[str, Any]]:
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
        rows = []
        for line in complete.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                self._store.skipped_lines += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows


class RunStore:
    """A read-only, live view of one run directory."""

    def __init__(self, directory: str | Path) -> None:
        path = Path(directory)
        if not path.exists():
            raise SlipstreamError(f"run directory {directory} does not exist")
        if not path.is_dir():
            raise SlipstreamError(f"{directory} is not a directory")
        self.root = path.resolve()
        markers = ("config.json", "metrics.jsonl", "rollouts")
        if not any(self.safe_path(m, allow_dir=True) for m in markers):
            raise SlipstreamError(f"{directory} is not a run directory "
                                  "(no config.json, metrics.jsonl or rollouts/)")
        self.skipped_lines = 0
        self.config = self._read_config()
        self.rows: list[dict[str, Any]] = []
        self._row_at: dict[tuple[str, int], int] = {}        # (sample id, step) -> index in rows
        self.metrics: list[dict[str, Any]] = []
        self._indexed_files: set[str] = set()
        self._summarised_files: set[str] = set()
        self._index = JsonlFollower(self, f"rollouts/{INDEX_NAME}")
        self._metrics = JsonlFollower(self, "metrics.jsonl")
        self._lock = threading.Lock()
        self._refreshed_at = 0.0
        self.refresh(force=True)

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
    def refresh(self, force: bool = False) -> None:
        """Take in what was appended since the last refresh (at most every 0.5 s)."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._refreshed_at < _REFRESH_EVERY_S:
                return
            self._refreshed_at = now
            for row in self._index.new_rows():
                self._indexed_files.add(row.get("file", ""))
                self._add_row(row)
            for name in self._listing("rollouts", _STEP_FILE):
                if name not in self._indexed_files and name not in self._summarised_files:
                    self._summarise_step_file(name)
            self.metrics.extend(r for r in self._metrics.new_rows() if "step" in r)

    def _add_row(self, row: dict[str, Any]) -> None:
        key = (str(row.get("id")), int(row.get("step", 0)))
        if key in self._row_at:                   # the index line replaces a file summary
            self.rows[self._row_at[key]] = row
        else:
            self._row_at[key] = len(self.rows)
            self.rows.append(row)

    def _summarise_step_file(self, name: str) -> None:
        path = self.safe_path(f"rollouts/{name}")
        if path is None:
            return
        self._summarised_files.add(name)
        offset = 0
        with path.open("rb") as handle:
            for line in handle:
                if line.endswith(b"\n"):
                    try:
                        self._add_row(index_row(json.loads(line), name, offset, len(line)))
                    except (ValueError, KeyError, TypeError):
                        self.skipped_lines += 1
                offset += len(line)

    # -- reading -----------------------------------------------------------------------------
    def find_row(self, sample_id: str, step: int | None = None) -> dict[str, Any] | None:
        if step is not None:
            at = self._row_at.get((sample_id, step))
            return self.rows[at] if at is not None else None
        matches = [r for r in self.rows if r.get("id") == sample_id]
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
        return [r for r in self.rows if r.get("group") == group_id]

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
        deterministic = self.config.get("deterministic") is True
        info = {"name": self.root.name, "deterministic": deterministic,
                "max_lag": (self.config.get("buffer") or {}).get("max_lag"),
                "samples": len(self.rows), "steps": len({r.get("step") for r in self.rows}),
                "metric_rows": len(self.metrics), "skipped_lines": self.skipped_lines,
                "config": self.config}
        if deterministic:
            info["banner"] = {"tokens": sum(int(r.get("det_tokens") or 0) for r in self.rows),
                              "nonzero": sum(int(r.get("det_nonzero") or 0) for r in self.rows)}
        return info

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
