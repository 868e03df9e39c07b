"""A hint, logged once, for CPU runs that fault in fresh memory at every step.

glibc hands blocks above its mmap threshold (32 MiB at most) back to the OS when they are freed, and trims
the top of its heap, so a run whose per-step tensors are that large (pixel MNIST, PTB, large N) gets them
as fresh pages at every step: the kernel zeroes and maps each page again. Keeping them
(`MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647`) makes such runs faster for more
peak resident memory (how much: BENCHMARKS.md, "Training runs with large tensors"). That trade is
the user's to make, so krubench measures the faults, says so once, and changes nothing itself.
"""
from __future__ import annotations

import os
import sys

ENV = "MALLOC_MMAP_THRESHOLD_"
KEEP = f"{ENV}=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647"  # glibc keeps freed blocks
FAULTED_MB_PER_STEP = 64  # what is worth a hint: fresh pages per training step, once warmed up


def minor_faults() -> int | None:
    """This process's minor page faults so far (None where the platform does not count them)."""
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):
        return None


class PageFaultWatch:
    """Counts the page faults of training steps `first` to `last` on a Linux CPU run; `check(step)` returns
    the hint once, at step `last`, if they fault in more than FAULTED_MB_PER_STEP per step."""

    def __init__(self, device, first: int = 2, last: int = 6):
        self.active = device.type == "cpu" and sys.platform.startswith("linux") and ENV not in os.environ
        self.first, self.last, self.start = first, last, None

    def check(self, step: int) -> str | None:
        if not self.active or step not in (self.first, self.last):
            return None
        faults = minor_faults()
        if faults is None:
            self.active = False
            return None
        if step == self.first:
            self.start = faults
            return None
        self.active = False
        if self.start is None:  # resumed past the first step: nothing to compare with
            return None
        mb = (faults - self.start) / (self.last - self.first) * os.sysconf("SC_PAGE_SIZE") / 2**20
        if mb < FAULTED_MB_PER_STEP:
            return None
        return (f"hint: each training step faults in about {mb:,.0f} MB of fresh memory (glibc returns large freed "
                f"blocks to the OS). Running with {KEEP} keeps them: faster steps for more peak memory (docs/kernels.md, "
                f"'Large tensors on the CPU'; measured in BENCHMARKS.md).")
