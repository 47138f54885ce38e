"""Contract tests of the CUDA path on a machine without a GPU: only the driver calls are stubbed
(tests/cuda_driver.py); torch's own Python and ours run as shipped. They show that our code meets torch's
and Triton's CUDA contracts (device indices, the current device at launch, the memory cap, cuDNN's LSTM,
fork after CUDA), not any figure measured on a GPU.
"""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import flop_registry

from bench.cli.doctor import main as doctor_main
from bench.devices import resolve_device
from bench.doctor import checks
from bench.doctor.kernels import STUDY_CHUNKS, STUDY_D_STATES, offset_widths
from bench.profiling import memory
from bench.profiling.macs import flop_counter
from bench.profiling.workload import ProfileSettings
from bench.quality import metrics
from variants import scan, scan_triton
from variants.errors import MbsbenchError
from variants.registry import build_config
from variants.scan import auto_report, choose_scan

GIB = 2**30
SPELLINGS = [("cuda", 0), ("cuda:0", 0), ("cuda:1", 1)]


@pytest.mark.parametrize("name,index", [("auto", 0), *SPELLINGS])
def test_every_device_spelling_resolves_to_an_indexed_device(cuda_driver, name: str, index: int) -> None:
    assert resolve_device(name) == f"cuda:{index}"


def test_a_bare_cuda_is_the_current_device_and_a_missing_one_is_refused(cuda_driver) -> None:
    cuda_driver.current = 1
    assert resolve_device("cuda") == "cuda:1"
    with pytest.raises(MbsbenchError, match="2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name,index", SPELLINGS)
def test_the_emulated_card_caps_the_right_device_net_of_its_context(cuda_driver, name: str, index: int) -> None:
    """torch's set_per_process_memory_fraction refuses a device without an index (ValueError before); a 12 GB
    card also loses its context and library workspaces (0.5 GiB here) outside torch's pool."""
    with memory.emulated_card(12 * GIB, name) as outside:
        assert outside == GIB // 2
        assert cuda_driver.fractions == {index: pytest.approx((12 * GIB - GIB // 2) / (80 * GIB))}
    assert cuda_driver.fractions == {index: 1.0}


@pytest.mark.parametrize("name,index", SPELLINGS)
def test_max_batch_bisects_against_the_cap_it_set(cuda_driver, monkeypatch, name: str, index: int) -> None:
    """A step fits when its memory stays under the cap torch was given: the batch found follows the card
    net of its context (12 GiB - 0.5 GiB at 1 GiB per item: 11), whatever the spelling of the device."""
    def fits(model, cfg, settings, batch: int) -> bool:
        cap = cuda_driver.fractions.get(index, 1.0) * cuda_driver.total
        return batch * GIB <= cap

    monkeypatch.setattr(memory, "fits_in_pool", fits)
    settings = ProfileSettings(batch=1, seconds=2.0, device=name, rss=False)
    assert memory.max_batch_cuda(None, build_config("optimized"), settings, 12 * GIB) == 11


def test_triton_launches_under_the_tensors_device(cuda_driver, monkeypatch) -> None:
    """Triton launches on torch.cuda.current_device() (its driver's get_current_device): tensors on cuda:1
    while cuda:0 is current must launch with cuda:1 current, and cuda:0 current again after."""
    seen = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **meta: seen.append(torch.cuda.current_device())

    monkeypatch.setattr(scan_triton, "jit", lambda interpret: {"forward": Recorder(), "backward": Recorder()})
    with FakeTensorMode():
        inputs = [torch.empty(*shape, device="cuda:1") for shape in ((2, 5, 8), (2, 5, 8), (8, 4), (2, 5, 4),
                                                                    (2, 5, 4), (8,))]
        launch, _, _ = scan_triton.forward_launch(inputs, None, 32)
        scan_triton.run(launch, inputs[0].device)
    assert seen == [1] and torch.cuda.current_device() == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine may launch the kernels")
def test_auto_passes_triton_over_when_its_first_launch_fails(monkeypatch) -> None:
    """A first launch that fails (here: no CUDA behind the device) rules triton out for auto, with the reason,
    instead of failing inside the model; the probe runs once per device."""
    monkeypatch.setattr(scan, "_FIRST_LAUNCH", {})
    monkeypatch.setattr(scan, "TRITON", True)
    with pytest.warns(UserWarning, match="scan=auto on cuda:1: .*; the model runs with chunked_ckpt"):
        assert choose_scan("auto", torch.device("cuda:1")) == "chunked_ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = dict(auto_report(torch.device("cuda:1")))
    assert report["triton"] and report["chunked_ckpt"] is None and list(scan._FIRST_LAUNCH) == [1]


@pytest.mark.skipif(not scan_triton.TRITON, reason="triton is not installed")
def test_the_first_launch_probe_runs_for_real_and_reports_a_compile_failure(monkeypatch) -> None:
    """The same probe on the CPU under the interpreter: a working kernel matches the float64 loop, also when
    asked from inside a fake-tensor trace; a launch that cannot compile (no C compiler) is its reason."""
    if not scan_triton.interpreted():
        pytest.skip("the kernels run compiled on this machine")
    with FakeTensorMode():
        assert scan._first_triton_launch(torch.device("cpu")) is None

    def no_compiler(launch, device):
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")

    monkeypatch.setattr(scan_triton, "run", no_compiler)
    assert scan._first_triton_launch(torch.device("cpu")) == "RuntimeError: Failed to find C compiler. Please " \
                                                              "specify via CC environment variable."


def test_auto_never_gives_a_float64_run_a_float32_kernel(cuda_driver, monkeypatch) -> None:
    monkeypatch.setattr(scan, "_mamba_selective_scan_fn", lambda *args: None)  # mamba_ssm importable
    monkeypatch.setattr(scan, "_FIRST_LAUNCH", {0: None})  # triton's first launch worked
    assert choose_scan("auto", torch.device("cuda:0")) == "cuda"
    assert choose_scan("auto", torch.device("cuda:0"), torch.float64) == "triton"  # it computes in float64
    assert "float32" in dict(auto_report(torch.device("cuda:0"), torch.float64))["cuda"]


def test_lstm_macs_are_counted_where_cudnn_would_run_them(cuda_driver, monkeypatch) -> None:
    """cuDNN's and oneDNN's LSTM kernels have no FlopCounter formula (BSRNN's LSTM MACs vanished on CUDA):
    inside the counter neither may take an LSTM. torch's own is_acceptable decides, with cuDNN present."""
    assert not any("rnn" in str(op) for op in flop_registry)  # the premise: no formula for the fused kernels
    monkeypatch.setattr(torch._C, "_has_cudnn", True, raising=False)
    monkeypatch.setattr(torch._C, "_cuda_get_cudnn_benchmark_limit", lambda: 10, raising=False)
    monkeypatch.setattr(torch._C, "_cuda_set_cudnn_benchmark_limit", lambda limit: None, raising=False)
    # cuDNN's library loaded (the module object is a wrapper: its functions read the original's globals)
    monkeypatch.setitem(torch.backends.cudnn.is_acceptable.__globals__, "_init", lambda: True)
    with FakeTensorMode():
        x = torch.empty(2, 10, 64, device="cuda:0")
        assert torch.backends.cudnn.is_acceptable(x)
        with flop_counter():
            assert not torch.backends.cudnn.is_acceptable(x) and not torch._C._get_mkldnn_enabled()


def test_the_metric_pool_does_not_fork_a_process_that_initialised_cuda(monkeypatch) -> None:
    """Fork after CUDA (and NCCL) threads exist copies locks held by threads the child does not have."""
    assert metrics._pool_context().get_start_method() == "fork"
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    context = metrics._pool_context()
    assert context.get_start_method() in ("forkserver", "spawn")
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=context) as pool:  # the workers start and score under it
        assert max(pool.map(metrics.pesq_or_worst, [(TONE, TONE)])) > 4.0


TONE = (torch.sin(torch.arange(16000) * 0.05) * torch.linspace(0.1, 0.5, 16000)).numpy()


def test_a_failing_check_is_a_row_and_the_rest_go_on(tmp_path: Path, monkeypatch) -> None:
    def broken(report, device):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")

    def fine(report, device):
        report.add("fine", ok=True)

    plan = [("broken", broken), ("fine", fine)]
    monkeypatch.setattr(checks, "plan", lambda cuda: plan)
    code = doctor_main(["--dry-run", "--out", str(tmp_path / "d.json")])
    rows = json.loads((tmp_path / "d.json").read_text())["rows"]
    assert code == 1 and [r["check"] for r in rows] == ["broken", "fine"]
    assert rows[0]["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"


def test_the_doctor_on_a_gpu_it_cannot_use_writes_every_check_as_a_row(cuda_driver, tmp_path: Path,
                                                                      capsys) -> None:
    """Every GPU check fails here (no real device behind the driver): each is a row with its error, the JSON
    is written, and the device is the indexed one (the bare 'cuda' crashed the third check before)."""
    code = doctor_main(["--out", str(tmp_path / "d.json")])
    report = json.loads((tmp_path / "d.json").read_text())
    names = [name for name, _ in checks.plan(True)]
    assert code == 1 and report["mode"] == "cuda"
    assert {r["check"] for r in report["rows"]} >= set(names)
    assert report["rows"][0]["device"] == "cuda:0"
    assert "max batch in 12 GB" in capsys.readouterr().out


def test_offset_widths_reads_every_pointer_addition() -> None:
    ttir = ("%1 = tt.addptr %0, %off : tensor<32x!tt.ptr<f32>>, tensor<32xi64> loc(#loc5)\n"
            "%3 = tt.addptr %2, %i : !tt.ptr<f32>, i32 loc(#loc6)\n"
            "%5 = tt.addptr %4, %j : tensor<32x16x!tt.ptr<f64>>, tensor<32x16xi64> loc(#loc7)\n")
    assert offset_widths(ttir) == ["i32", "i64"]


def test_the_compile_check_covers_the_study_knobs() -> None:
    from studies.space import KNOBS

    assert set(KNOBS["d_state"].choices) <= set(STUDY_D_STATES)
    assert set(KNOBS["chunk_size"].choices) <= set(STUDY_CHUNKS)


@pytest.mark.processes
@pytest.mark.skipif(not scan_triton.TRITON, reason="triton is not installed")
def test_every_kernel_compiles_for_sm80_with_64_bit_offsets(tmp_path: Path) -> None:
    """Triton's own compiler, to a cubin, at every specialization the project launches; every pointer offset
    is 64-bit (Triton's int32 arithmetic wrapped past 2**31 elements before)."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "bench.doctor", "--compile-only", "--targets", "80", "--out",
                           "k.json"], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "k.json").read_text())["rows"]
    assert len(rows) >= 36 and all(r["ok"] and r["offsets"] == "i64" and r["registers"] > 0 for r in rows)
    assert {(r["kernel"], r["inputs"]) for r in rows} >= {(k, d) for k in ("forward", "backward")
                                                          for d in ("fp32", "bf16", "fp64")}
    assert "sm_80" in proc.stdout and "24/24" in proc.stdout and "12/12" in proc.stdout
