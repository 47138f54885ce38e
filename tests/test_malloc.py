"""bench.malloc: glibc's malloc set for this process and its children, never over the user's choice."""

import os
import subprocess
import sys

import pytest

from bench.malloc import SETTING, TUNABLES, _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt only")


def setting_after_tuning(**env: str) -> list[str]:
    """tune_malloc's setting in a fresh process, and malloc_setting in a child it starts."""
    code = ("import subprocess, sys; from bench.malloc import tune_malloc; print(tune_malloc());"
            "print(subprocess.run([sys.executable, '-c', 'from bench.malloc import malloc_setting;"
            "print(malloc_setting())'], capture_output=True, text=True).stdout.strip())")
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MBSBENCH_MALLOC")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=base | env, timeout=60)
    return done.stdout.splitlines()


def test_children_inherit_the_setting() -> None:
    assert setting_after_tuning() == [SETTING] * 2


def test_the_users_tunables_are_kept() -> None:
    mine = "glibc.malloc.mmap_threshold=65536"
    assert setting_after_tuning(GLIBC_TUNABLES=mine) == [f"GLIBC_TUNABLES={mine} (the user's)"] * 2


def test_other_tunables_are_kept_beside_ours() -> None:
    code = "import os; from bench.malloc import tune_malloc; tune_malloc(); print(os.environ['GLIBC_TUNABLES'])"
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.stdout.strip() == f"glibc.cpu.hwcaps=-AVX512F:{TUNABLES}"


def test_opting_out() -> None:
    assert setting_after_tuning(MBSBENCH_MALLOC="default") == ["default (MBSBENCH_MALLOC=default)"] * 2


MAPPED_BLOCKS = """
import ctypes, sys, torch
from bench.malloc import tune_malloc
if sys.argv[1] == "tune":
    tune_malloc()
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keep")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
before = libc.mallinfo2().hblks
big = torch.empty(64 * 2**20, dtype=torch.uint8)
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(not hasattr(_glibc(), "mallinfo2"), reason="glibc 2.33+ (mallinfo2)")
def test_a_large_tensor_comes_from_the_heap_not_mmap() -> None:
    def mapped_blocks(mode: str, **env: str) -> int:
        base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MBSBENCH_MALLOC")}
        done = subprocess.run([sys.executable, "-c", MAPPED_BLOCKS, mode], capture_output=True, text=True,
                              env=base | env, timeout=60, check=True)
        return int(done.stdout.split()[-1])

    assert mapped_blocks("default") == 1  # glibc's own: a 64 MiB block is mmapped
    assert mapped_blocks("tune") == 0  # mallopt, in this process
    assert mapped_blocks("default", GLIBC_TUNABLES=TUNABLES) == 0  # the tunables, as a child reads them
