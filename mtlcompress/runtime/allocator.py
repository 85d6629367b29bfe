"""Keep freed memory in the process, so that tensors of a few MiB do not fault their
pages in again on every call (glibc malloc only; a no-op elsewhere).

glibc serves allocations above a threshold with ``mmap`` (128 KiB when a process starts,
raised as such blocks are freed) and returns free memory at the top of its heap to the
operating system. A ViT's activations are hundreds of KiB to a few MiB each, so early
in a process many of them come from fresh pages, a page fault per 4 KiB: in
``run_all.py`` the first operating point's shared image path took 1.5x as long as the
same bundle measured later in the same process. This is the per-process setting
PyTorch's CPU tuning guides reach with jemalloc or tcmalloc, with the allocator the
process already has. It is process-wide, so the library never calls it on import:
the ``run`` and ``bench`` commands and the benchmarks do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_ABOVE = 32 * 2**20  # glibc's largest mmap threshold on 64-bit: bigger blocks still map
_TRIM_ABOVE = 2**30       # give memory back to the OS only past 1 GiB free at the heap top


def keep_freed_memory() -> bool:
    """Set glibc malloc to keep freed blocks up to 32 MiB and the heap's free top up to
    1 GiB in the process. Returns whether it applied (False off glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_ABOVE)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_ABOVE))
