"""glibc's malloc set for steady step times: freed tensor memory kept for the next step, not returned to the OS.

By default glibc serves blocks above a threshold that it moves at run time with mmap and unmaps them on free, so
a step's large tensors were page-faulted in afresh on some steps and not on others: the same optimized training
step (batch 1, 2 s, 2 cores) had medians of 0.28-0.35 s from one fresh process to the next. Here no block is
mmapped (every one comes from the heap and goes back to it on free, as a caching allocator keeps it) and the heap
is trimmed only above 1 GiB free at its top: the first training step at batch 6, 2 s faults in each page once
(1.1-1.2 M faults, 5.3-7.2 s) instead of unmapping and faulting its large tensors again (2.1-2.4 M, 9.0-11.7 s
with the threshold fixed at 32 MiB), and the steps after it fault few pages or none (0-170 k, mostly in the first
of them where the heap's layout shifts; 3.3-4.1 s, against 3.3-5.1 s). Set for this process
(mallopt) and its children (GLIBC_TUNABLES: spawned workers, torchrun's ranks); left alone where the user set
GLIBC_TUNABLES's malloc tunables or MBSBENCH_MALLOC=default.
"""

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameter numbers (malloc.h)
TRIM_THRESHOLD = 2**30
TUNABLES = f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"
SETTING = "no mmap, trim 1 GiB"


def malloc_setting() -> str:
    """What this process's malloc runs with, for the logs."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if TUNABLES in tunables:  # set by tune_malloc here, or inherited and read by glibc at this process's start
        return SETTING
    if "glibc.malloc." in tunables:
        return f"GLIBC_TUNABLES={tunables} (the user's)"
    return "default" + (" (MBSBENCH_MALLOC=default)" if os.environ.get("MBSBENCH_MALLOC") == "default" else "")


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl and others: no mallopt to set
        return None
    return libc if hasattr(libc, "mallopt") else None


def tune_malloc() -> str:
    """Set malloc for this process and its children, unless the user chose otherwise; the setting."""
    tunables, libc = os.environ.get("GLIBC_TUNABLES", ""), _glibc()
    users = "glibc.malloc." in tunables and TUNABLES not in tunables
    if libc is None or users or os.environ.get("MBSBENCH_MALLOC") == "default":
        return malloc_setting()
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    if TUNABLES not in tunables:
        os.environ["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLES}" if tunables else TUNABLES
    return malloc_setting()
