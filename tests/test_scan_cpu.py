"""The C kernel scan (scan=cpu_fused): what auto picks on a CPU, results that do not depend on the thread count,
one build per machine, and a missing compiler named. Its values against the float64 loop: tests/test_scan.py."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from tests.test_scan import make_inputs
from variants import scan
from variants.errors import MbsbenchError
from variants.scan import choose_scan
from variants.scan_cpu import compiler, kernel_library, selective_scan_cpu_fused

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


@pytest.fixture
def fresh_kernel(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A process as if new: no kernel loaded, auto not yet probed, the user cache in tmp_path."""
    monkeypatch.setenv("MBSBENCH_CACHE", str(tmp_path))
    scan._first_cpu_call.cache_clear()
    kernel_library.cache_clear()
    yield tmp_path
    scan._first_cpu_call.cache_clear()  # the next user probes and loads the session's own build again
    kernel_library.cache_clear()


def test_built_once_per_machine_then_loaded(fresh_kernel) -> None:
    assert choose_scan("auto", torch.device("cpu")) == "cpu_fused"
    [library] = fresh_kernel.glob("kernels/*/scan_cpu.so")
    built = library.stat().st_mtime_ns
    kernel_library.cache_clear()  # the next process
    kernel_library()
    assert library.stat().st_mtime_ns == built and list(fresh_kernel.glob("kernels/*/scan_cpu.so")) == [library]


def test_without_a_compiler_auto_says_why_and_runs_chunked_ckpt(fresh_kernel, monkeypatch) -> None:
    monkeypatch.setenv("CC", "no-such-cc")
    with pytest.warns(UserWarning, match=r"scan=auto on cpu: the C kernel cannot be built: \$CC='no-such-cc' is "
                                         "not on the PATH; the model runs with chunked_ckpt"):
        assert choose_scan("auto", torch.device("cpu")) == "chunked_ckpt"
    assert not list(fresh_kernel.iterdir())


@pytest.mark.parametrize("block", [torch.no_grad, torch.inference_mode])
def test_auto_picks_the_kernel_when_first_asked_without_autograd(fresh_kernel, block) -> None:
    """The probe's backward runs with autograd on: a first resolution under no_grad (counting MACs, inference) or
    inference mode once made auto fall back to chunked_ckpt for the whole process."""
    with block():
        assert choose_scan("auto", torch.device("cpu")) == "cpu_fused"


def test_an_unwritable_cache_is_one_line(fresh_kernel, monkeypatch) -> None:
    blocked = fresh_kernel / "file"
    blocked.write_text("")  # a file where the cache folder should be
    monkeypatch.setenv("MBSBENCH_CACHE", str(blocked))
    with pytest.raises(MbsbenchError, match=f"scan='cpu_fused': cannot write its kernel into {blocked / 'kernels'}"):
        selective_scan_cpu_fused(*make_inputs(4, torch.float32, batch=1, d=2, n=3)[:6])
