"""bench.malloc: glibc's thresholds fixed for this process and its children, never over the user's choice."""

import os
import subprocess
import sys

import pytest

from bench.malloc import TUNABLES, _glibc

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
    assert setting_after_tuning() == ["mmap threshold 32 MiB, trim 1 GiB"] * 2


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
