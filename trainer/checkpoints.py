"""Crash-consistent checkpoints: a checkpoint either exists whole or is known to be incomplete.

DeepSpeed writes a checkpoint as a folder of files plus a `latest` file naming it; a run killed
mid-write (or a full disk) leaves a folder that looks like a checkpoint and is not. So:

1. DeepSpeed writes into `DIR/.partial-<tag>` (its own `latest` is not touched), and the
   caller's own files (the learner's replay weights, the controller's buffer state) beside it;
2. the folder is renamed to `DIR/<tag>` (atomic on one file system);
3. a manifest (`MANIFEST`: every file with its size) is written last, by write-and-rename;
4. `DIR/latest` is replaced, by write-and-rename, to name the new checkpoint;
5. all but the newest `keep` complete checkpoints are removed, with any incomplete leftovers.

`complete_checkpoints` trusts a checkpoint only if its manifest is there and every listed file
has its size; `latest_complete` returns the newest such one and warns, in one line each, about
newer ones it had to pass over.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slipstream.errors import SlipstreamError

MANIFEST = "slipstream-manifest.json"
_PARTIAL = ".partial-"


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(engine, directory: str | Path, tag: str, client_state: dict[str, Any],
                    keep: int, write_extra: Callable[[Path], None] | None = None) -> Path:
    """Save DeepSpeed `engine` as `directory/tag` (steps above); returns its folder.
    `write_extra(folder)` adds the caller's files before the rename, so the manifest covers
    them too. The manifest repeats the JSON-ready part of `client_state` (`read_manifest`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f"{_PARTIAL}{tag}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        engine.save_checkpoint(str(directory), tag=partial.name, client_state=client_state,
                               save_latest=False)
        if write_extra is not None:
            write_extra(partial)
    except Exception as error:  # noqa: BLE001 - torch and DeepSpeed raise several kinds
        # A full disk is the usual cause (torch says only "file write failed"): free the half
        # written folder, keep the earlier checkpoints, and say how much room there is.
        shutil.rmtree(partial, ignore_errors=True)
        free_mb = shutil.disk_usage(directory).free / 2**20
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise SlipstreamError(f"checkpoint {tag} could not be written to {directory} "
                              f"({free_mb:.0f} MiB free there): {first}; the earlier "
                              "checkpoints are intact") from None
    final = directory / tag
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    files = {str(p.relative_to(final)): p.stat().st_size
             for p in sorted(final.rglob("*")) if p.is_file()}
    plain = {k: v for k, v in client_state.items() if isinstance(v, (int, float, str, bool))}
    _write_atomically(final / MANIFEST, json.dumps({"tag": tag, "files": files,
                                                    "client_state": plain}, indent=1))
    _write_atomically(directory / "latest", tag)
    _prune(directory, keep)
    return final


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a complete checkpoint: its tag, files and the client state's plain
    values (the learner's step and version)."""
    return json.loads((Path(folder) / MANIFEST).read_text())


def is_complete(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return all((folder / name).is_file() and (folder / name).stat().st_size == size
                   for name, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _checkpoint_folders(directory: Path) -> list[Path]:
    """Every checkpoint folder (complete or not), oldest first by tag (tags sort by step)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.is_dir() and not p.name.startswith("."))


def complete_checkpoints(directory: str | Path) -> list[Path]:
    return [p for p in _checkpoint_folders(Path(directory)) if is_complete(p)]


def latest_complete(directory: str | Path) -> Path | None:
    """The newest complete checkpoint, warning once per newer incomplete one passed over."""
    for folder in reversed(_checkpoint_folders(Path(directory))):
        if is_complete(folder):
            return folder
        print(f"slipstream: warning: checkpoint {folder} is incomplete (killed mid-write or "
              "a full disk); using an older one", file=sys.stderr)
    return None


def _prune(directory: Path, keep: int) -> None:
    """After a successful save: the newest `keep` complete checkpoints stay; older ones, and
    incomplete or partial folders (garbage once a newer checkpoint is whole), go."""
    kept = set(complete_checkpoints(directory)[-keep:])
    for folder in [*directory.glob(f"{_PARTIAL}*"), *_checkpoint_folders(directory)]:
        if folder not in kept:
            shutil.rmtree(folder, ignore_errors=True)
