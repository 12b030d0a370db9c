"""glibc malloc tuning for CPU training: the pinned mmap threshold GradCache sets.

On CPU every activation tensor comes from ``malloc``, and glibc's *dynamic* mmap threshold
makes that costly for GradCache: a freed mapped block (128 KiB to 32 MiB) larger than the
threshold raises it to its size, so from the first mini-batch on activations are carved out of
the heap, and the next mini-batch -- another shape, so other sizes -- does not fit the holes the
last one left. The heap grows by a fraction of a mini-batch's activations at each new shape and
holes stay resident: measured on all-MiniLM-L6-v2 (1024 pairs, mini-batches of 32), the step's
resident peak was 910 MiB above the memory in use before it, 479 with the threshold pinned
(docs/benchmarks/gradcache-memory.md).

:func:`pin_malloc_mmap_threshold` therefore fixes the threshold once per process
(``mallopt(M_MMAP_THRESHOLD, 128 KiB)``): large blocks are mapped and unmapped, and a step's
peak is what its largest mini-batch holds. Process-wide and permanent (glibc has no way back to
the dynamic threshold); skipped when ``MALLOC_MMAP_THRESHOLD_`` or a
``glibc.malloc.mmap_threshold`` tunable is set.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["CPU_MMAP_THRESHOLD", "pin_malloc_mmap_threshold", "pinned_mmap_threshold"]

#: Bytes from which glibc maps a block of its own (returned to the system when freed) once
#: GradCache runs on CPU: glibc's own initial value, pinned (see the module docstring).
CPU_MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt parameter number, <malloc.h>
_mmap_threshold_pinned: int | None = None


def _user_set_mmap_threshold() -> bool:
    return "MALLOC_MMAP_THRESHOLD_" in os.environ or "glibc.malloc.mmap_threshold" in os.environ.get(
        "GLIBC_TUNABLES", ""
    )


def pinned_mmap_threshold() -> int | None:
    """The threshold :func:`pin_malloc_mmap_threshold` pinned in this process (None: none yet)."""
    return _mmap_threshold_pinned


def pin_malloc_mmap_threshold(threshold: int = CPU_MMAP_THRESHOLD) -> bool:
    """Fix glibc malloc's mmap threshold at ``threshold`` bytes for this process.

    Blocks of at least ``threshold`` bytes are then always mapped on their own and unmapped
    when freed, instead of being carved out of a heap whose holes stay resident (glibc's
    dynamic threshold climbs to the largest freed block, up to 32 MiB, after which most
    activation tensors come from the heap; see the module docstring). Returns whether the
    threshold is pinned at ``threshold`` now. Does nothing (False) off glibc, when the user set
    ``MALLOC_MMAP_THRESHOLD_`` or the ``glibc.malloc.mmap_threshold`` tunable, or once a
    different value was pinned here. Process-wide; idempotent.
    """
    global _mmap_threshold_pinned
    threshold = int(threshold)
    if _mmap_threshold_pinned is not None:
        return _mmap_threshold_pinned == threshold
    if not sys.platform.startswith("linux") or _user_set_mmap_threshold():
        return False
    try:
        process = ctypes.CDLL(None)  # the malloc this process uses (a preloaded one included)
        if not hasattr(process, "gnu_get_libc_version"):
            return False  # musl and other C libraries: no such threshold
        mallopt = process.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, threshold) != 1:
        return False
    _mmap_threshold_pinned = threshold
    return True
