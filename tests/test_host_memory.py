"""The learner hands freed heap pages back to the system after each micro-batch."""

import platform

import psutil
import pytest
import torch

from slipstream.trainer.learner import release_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_tensors_leave_the_resident_set():
    process = psutil.Process()
    # Medium tensors, each followed by a small one that stays: the small ones pin the heap, so
    # glibc cannot shrink it by itself when the medium ones go.
    medium, kept = [], []
    for _ in range(400):
        medium.append(torch.ones(64 * 1024))          # 256 KiB each, 100 MiB in all
        kept.append(torch.ones(16))
    del medium
    before = process.memory_info().rss
    release_freed_memory()
    after = process.memory_info().rss
    assert before - after > 50 * 2**20, (before, after)
    assert len(kept) == 400
