"""Keeping freed memory in the process, so that a steady-state forward maps no fresh pages.

glibc serves a large request (up to 32 MB, or any size past that) with a fresh mmap and unmaps it
on free; smaller blocks freed at the top of the heap go back to the OS once more than the trim
threshold is free. Either way the next forward touches new pages, and each minor page fault costs
~2.5 us here: 9-38 thousand of them per batch-8 forward, a third of MobileNetV2's time. onnxruntime
avoids this with an arena; `hold_freed_memory` gets the same from glibc by raising both thresholds,
so freed blocks stay in the heap and are handed out again. The cost: the process keeps its peak
memory until it exits. It is process-wide, which is why `compile` says so and lets callers opt out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_LIMIT = 1 << 30  # requests above 1 GiB are still mapped and returned: no arena holds those


@functools.cache
def hold_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse (see the module doc); False where libc is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # glibc only; musl and others have no mallopt of this meaning
    except (OSError, AttributeError, TypeError):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_LIMIT)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def minor_faults() -> int:
    """Minor page faults of this process so far (pages it touched for the first time)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
