"""The learner hands freed heap pages back to the system after each micro-batch."""

import os
import platform
import subprocess
import sys

import pytest

# Runs in a fresh interpreter: whether glibc serves a 256 KiB block from the heap or from its own
# mapping depends on the process's history (its mmap threshold rises each time a mapped block is
# freed), so inside a long pytest process the blocks may already be gone before the trim. The
# pinned threshold puts them on the heap, as the learner's activations are once it has run a while.
_CHILD = """
import psutil, torch
from slipstream.trainer.learner import release_freed_memory
process = psutil.Process()
# Medium tensors, each followed by a small one that stays: the small ones pin the heap, so glibc
# cannot shrink it by itself when the medium ones go.
medium, kept = [], []
for _ in range(400):
    medium.append(torch.ones(64 * 1024))          # 256 KiB each, 100 MiB in all
    kept.append(torch.ones(16))
del medium
before = process.memory_info().rss
release_freed_memory()
after = process.memory_info().rss
print(before - after, len(kept))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_tensors_leave_the_resident_set():
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(4 * 2**20),
               MALLOC_TRIM_THRESHOLD_=str(2**30))
    result = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                            text=True, timeout=120, check=True)
    released, kept = map(int, result.stdout.split())
    assert released > 50 * 2**20, released
    assert kept == 400
