"""The C kernel scan (scan=cpu_fused): what auto picks on a CPU, results that do not depend on the thread count,
one build per machine, and a missing compiler named. Its values against the float64 loop: tests/test_scan.py."""

import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from tests.test_scan import make_inputs
from variants.scan_cpu import compiler, selective_scan_cpu_fused

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C compiler here")


def test_threads_do_not_change_a_bit() -> None:
    """Each batch row runs on one thread in a fixed order, and dA's rows are summed by torch: the same output and
    gradients, bit for bit, on 1 and on 2 threads."""
    inputs = make_inputs(67, torch.float32, batch=5, d=24, n=6)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            y = selective_scan_cpu_fused(*inputs, chunk_size=16)
            results.append([y, *torch.autograd.grad(y, inputs, torch.ones_like(y))])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_the_kernel_traces_on_fake_tensors() -> None:
    """Registered as torch operators with fake forms: a fake trace allocates nothing and gives the shapes."""
    with FakeTensorMode() as mode:
        inputs = [mode.from_tensor(t) for t in make_inputs(40, torch.float32, batch=3, d=8, n=4)]
        y = selective_scan_cpu_fused(*inputs, chunk_size=16)
        grads = torch.autograd.grad(y, inputs, torch.ones_like(y))
    assert y.shape == (3, 40, 8) and [g.shape for g in grads] == [t.shape for t in inputs]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=os.environ | env)


def test_built_once_per_machine_then_loaded(tmp_path) -> None:
    code = ("import torch; from variants.scan import choose_scan; print(choose_scan('auto', torch.device('cpu')))")
    first = run_python(code, MBSBENCH_CACHE=str(tmp_path))
    assert first.stdout.split() == ["cpu_fused"], first.stderr
    [library] = tmp_path.glob("kernels/*/scan_cpu.so")
    built = library.stat().st_mtime_ns
    assert run_python(code, MBSBENCH_CACHE=str(tmp_path)).stdout.split() == ["cpu_fused"]
    assert library.stat().st_mtime_ns == built and list(tmp_path.glob("kernels/*/scan_cpu.so")) == [library]


def test_without_a_compiler_auto_says_why_and_runs_chunked_ckpt(tmp_path) -> None:
    code = ("import torch, warnings; from variants.scan import choose_scan; warnings.simplefilter('always');"
            "print(choose_scan('auto', torch.device('cpu')))")
    done = run_python(code, MBSBENCH_CACHE=str(tmp_path), CC="no-such-cc")
    assert done.stdout.split() == ["chunked_ckpt"], done.stderr
    assert "scan=auto on cpu: the C kernel cannot be built: $CC='no-such-cc' is not on the PATH; the model runs " \
           "with chunked_ckpt" in done.stderr
    assert not list(tmp_path.iterdir())


def test_auto_picks_the_kernel_when_first_asked_without_autograd(tmp_path) -> None:
    """The probe's backward runs with autograd on: a first resolution under no_grad (counting MACs, inference) or
    inference mode once made auto fall back to chunked_ckpt for the whole process."""
    for block in ("torch.no_grad()", "torch.inference_mode()"):
        code = f"import torch; from variants.scan import choose_scan\nwith {block}: print(choose_scan('auto', " \
               "torch.device('cpu')))"
        done = run_python(code, MBSBENCH_CACHE=str(tmp_path))
        assert done.stdout.split() == ["cpu_fused"], (block, done.stderr)


def test_an_unwritable_cache_is_one_line(tmp_path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the cache folder should be
    code = ("import torch; from variants.scan_cpu import selective_scan_cpu_fused as f;"
            "f(torch.randn(1, 4, 2), torch.rand(1, 4, 2), -torch.rand(2, 3), torch.randn(1, 4, 3),"
            " torch.randn(1, 4, 3), torch.ones(2))")
    done = run_python(code, MBSBENCH_CACHE=str(blocked))
    assert done.returncode != 0
    assert f"MbsbenchError: scan='cpu_fused': cannot write its kernel into {blocked / 'kernels'}" in done.stderr
