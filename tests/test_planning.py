"""The CUDA memory planner: the allocator model against PyTorch's rules, the tracer against the CPU's measured
peak, and `bench plan` (issue 26)."""

import json

import pytest

from bench.__main__ import main as bench
from bench.planning.allocator import CachingAllocator, round_size, segment_size
from bench.planning.plan import replay
from bench.planning.trace import trace_step
from bench.profiling.memory import peak_bytes
from bench.profiling.workload import make_workload, measured_model
from variants.registry import build_config

KIB, MIB = 1024, 2**20


@pytest.mark.parametrize(("nbytes", "rounded"), [(1, 512), (512, 512), (513, 1024), (3 * MIB + 1, 3 * MIB + 512)])
def test_sizes_round_up_to_512_bytes(nbytes: int, rounded: int) -> None:
    assert round_size(nbytes) == rounded


@pytest.mark.parametrize(("nbytes", "segment"), [(512, 2 * MIB), (MIB, 2 * MIB), (MIB + 512, 20 * MIB),
                                                 (10 * MIB - 512, 20 * MIB), (10 * MIB, 10 * MIB),
                                                 (11 * MIB, 12 * MIB)])
def test_segment_sizes_of_each_pool(nbytes: int, segment: int) -> None:
    """Small requests (<= 1 MiB) take 2 MiB segments; large ones under 10 MiB 20 MiB; others round to 2 MiB."""
    assert segment_size(nbytes) == segment


def test_small_blocks_split_and_a_freed_block_is_reused() -> None:
    allocator = CachingAllocator()
    first = allocator.malloc(100)
    second = allocator.malloc(700)  # from the rest of the same 2 MiB segment
    assert (first.segment, first.size, second.segment, second.offset, second.size) == (0, 512, 0, 512, 1024)
    assert (allocator.allocated, allocator.reserved, allocator.segments) == (1536, 2 * MIB, 1)
    allocator.free(first)
    again = allocator.malloc(200)  # best fit: the 512-byte hole, not the rest of the segment
    assert (again.segment, again.offset) == (0, 0)
    large = allocator.malloc(MIB + 1)  # the large pool: its own 20 MiB segment
    assert (large.segment, large.size, allocator.reserved) == (1, MIB + 512, 22 * MIB)


def test_large_blocks_split_only_above_one_mib_and_freed_neighbours_merge() -> None:
    allocator = CachingAllocator()
    whole = allocator.malloc(19 * MIB + 512)  # a 20 MiB segment, the rest (511.5 KiB) not worth a split
    assert whole.size == 20 * MIB and allocator.allocated == 20 * MIB
    allocator.free(whole)
    left, right = allocator.malloc(4 * MIB), allocator.malloc(4 * MIB)  # two splits of the cached segment
    assert allocator.segments == 1 and (left.offset, right.offset) == (0, 4 * MIB)
    allocator.free(left)
    allocator.free(right)  # merged with both neighbours again: one free 20 MiB block
    big = allocator.malloc(18 * MIB)
    assert (big.segment, big.offset, allocator.segments, allocator.peak_reserved) == (0, 0, 1, 20 * MIB)


@pytest.mark.parametrize("name", ["optimized", "bsrnn"])
def test_the_tracer_replayed_without_an_allocator_is_the_cpu_measured_peak(name: str) -> None:
    """The same step traced on fake tensors and measured on real ones (bench profile --device cpu): within 2%
    (bsrnn's LSTMs: 75% under before oneDNN's workspace was modelled)."""
    cfg = build_config(name, temporal_layers=2, band_layers=1)  # every registered variant: README table
    work = make_workload(measured_model(cfg, "cpu"), cfg, 2, 0.3, "cpu", "float32")
    work.train()
    measured = peak_bytes(work.train, work.resident(), "cpu")
    predicted = replay(trace_step(cfg, 2, 0.3)).peak_live
    assert abs(predicted - measured) <= 0.02 * measured, (predicted, measured)


def test_plan_prints_every_figure_as_json(capsys: pytest.CaptureFixture) -> None:
    assert bench(["plan", "--variant", "optimized", "--batch", "1", "--seconds", "0.2", "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["scan"] == "triton" and row["pred_cuda_peak_reserved_mib"] >= row["pred_cuda_peak_alloc_mib"] > 0
    assert row["pred_cuda_peak_alloc_mib"] >= row["live_peak_train_mib"]  # blocks round up, never down
    parts = sum(v for k, v in row.items() if k.startswith("at_peak_"))
    assert parts == pytest.approx(row["pred_cuda_peak_alloc_mib"])


def test_verify_sets_the_measured_peak_beside_the_traced_one(capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """bench plan --verify: the step run on real CPU tensors (the variant's own scan), within 2% of the trace; a
    step that needs more memory than RAM and swap hold is refused with one line, before it runs."""
    from bench.planning import verify

    tiny = ["plan", "--variant", "optimized", "--set", "feature_dim=16", "--set", "temporal_layers=1", "--batch",
            "2", "--seconds", "0.3", "--verify"]
    assert bench([*tiny, "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["verify_scan"] == "chunked" and row["scan"] == "triton"  # checked on the CPU's scan, planned on Triton
    assert row["measured_live_peak_mib"] > 0 and abs(row["verify_error_pct"]) <= 2
    assert row["verify_error_pct"] == pytest.approx(
        100 * (row["traced_live_peak_mib"] - row["measured_live_peak_mib"]) / row["measured_live_peak_mib"])
    monkeypatch.setattr(verify, "swap_and_ram_bytes", lambda: 2**20)
    assert bench(tiny) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MiB of real memory; this machine has 1 MiB available (RAM and swap)" in err[0], err


def test_the_largest_batch_that_fits_a_card(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                           tmp_path) -> None:
    """The largest batch, and the batch x length frontier as rows and a plot (the same search per length)."""
    from bench.planning import plan

    monkeypatch.setitem(plan.CARDS, "1", 2**30)
    tiny = ["--variant", "optimized", "--set", "feature_dim=16", "--set", "temporal_layers=1", "--seconds", "0.5"]
    drawn = tmp_path / "frontier.png"
    assert bench(["plan", *tiny, "--batch", "2", "--card", "1", "--lengths", "0.5", "--plot", str(drawn),
                  "--format", "json"]) == 0  # the plan's own length: its traces are the frontier's (seconds saved)
    row = json.loads(capsys.readouterr().out)
    best = row["pred_max_batch_1"]
    cfg = plan.planned_config(build_config("optimized", feature_dim=16, temporal_layers=1), "auto")
    card = plan.card_bytes("1")
    assert best >= 2 and row["fits_1"] and plan.fits(cfg, best, 0.5, card) and not plan.fits(cfg, best + 1, 0.5, card)
    assert row["frontier"] == [{"seconds": 0.5, "pred_max_batch_1": best}]
    assert plan.frontier(cfg, (0.5, 0.5), {"1": card}) == row["frontier"] * 2  # per length, the same search
    assert drawn.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--card", "13"], "--card '13': expected one of 12, 16"),
    (["--batch", "0"], "--batch 0: expected an integer >= 1"),
    (["--scan", "cuda"], "--scan 'cuda': cannot be traced without its GPU"),
    (["--lengths", "1,2"], "--lengths: the frontier is per card; give --card too"),
    (["--card", "12", "--plot", "f.png"], "--plot: draws the frontier; give the utterance lengths with --lengths"),
    (["--verify", "--scan", "triton"], "--verify runs the step on this CPU: --scan 'triton' needs a GPU"),
    (["--verify", "--precision", "bf16"], "--verify: checks float32 steps on the CPU"),
])
def test_plan_bad_input_is_one_line(argv: list[str], fragment: str, capsys: pytest.CaptureFixture) -> None:
    try:
        code = bench(["plan", "--variant", "optimized", *argv])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


def test_the_claims_table_sets_a_prediction_beside_the_claim_under_its_conditions() -> None:
    """'OOM at batch 2 on a 12 GB card' and '~4 GB at batch 6-8' beside bench plan's predictions, marked
    predicted; a prediction for other conditions is '-' with its figure kept."""
    import pandas as pd

    from reports.collect import Store
    from reports.tables import claims_table

    def profile(variant: str, batch: int, seconds: float, **metrics) -> dict:
        return {"variant": variant, "start_time": len(variant), "run_status": "FINISHED", "device": "CPU x",
                "run_batch": str(batch), "run_seconds": str(seconds), "run_device": "CPU x",
                "run_budget_gb": "12.0", **metrics}

    profiles = pd.DataFrame([profile("original", 2, 2.0, pred_max_batch_cuda=4.0),
                             profile("optimized", 6, 1.0, pred_cuda_peak_reserved_mib=3072.0)])
    table = claims_table(Store("sqlite:///x.db", profiles, pd.DataFrame(), pd.DataFrame(), pd.DataFrame()))
    rows = {row[0]: row for row in table.rows}
    oom = rows["original out of memory at batch 2 (predicted)"]
    assert oom[3] == "4" and oom[4].startswith("predicted by bench plan") and "a 12.0 GiB card" in oom[4]
    memory = rows["optimized: ~4 GB at batch 6-8 (predicted)"]
    assert memory[3] == "-" and memory[4].startswith("3.00 GiB predicted") and "not the claim's conditions" in memory[4]


def test_a_profile_row_carries_the_prediction() -> None:
    """bench profile --predict: the plan's peaks at the row's batch and length, and the max batch in its budget."""
    from bench.planning.plan import predicted_cuda
    from bench.profiling.workload import ProfileSettings

    cfg = build_config("optimized", feature_dim=16, temporal_layers=1)
    row = predicted_cuda(cfg, ProfileSettings(batch=2, seconds=0.5, budget_gb=0.5))  # the steps of the card test
    assert row["pred_cuda_peak_reserved_mib"] >= row["pred_cuda_peak_alloc_mib"] > 0
    assert row["pred_max_batch_cuda"] >= 1  # the search itself: test_the_largest_batch_that_fits_a_card


def test_the_main_table_shows_predictions_when_profiles_have_them() -> None:
    import pandas as pd

    from reports.collect import Store
    from reports.tables import main_table

    row = {"variant": "optimized", "start_time": 1, "run_status": "FINISHED", "device": "CPU x",
           "run_batch": "6", "run_seconds": "2.0", "run_device": "CPU x",
           "run_budget_gb": "12.0", "params_m": 2.1, "pred_cuda_peak_reserved_mib": 1794.0,
           "pred_max_batch_cuda": 36.0}
    table = main_table(Store("sqlite:///x.db", pd.DataFrame([row]), pd.DataFrame(), pd.DataFrame(), pd.DataFrame()))
    cells = dict(zip(table.header, table.rows[0]))
    assert (cells["Pred. CUDA reserved (MiB)"], cells["Pred. max batch"]) == ("1794", "36")
    assert "predicted by bench plan" in table.caption
    bare = main_table(Store("sqlite:///x.db", pd.DataFrame([{k: v for k, v in row.items() if "pred" not in k}]),
                            pd.DataFrame(), pd.DataFrame(), pd.DataFrame()))
    assert "Pred. max batch" not in bare.header  # no prediction, no empty column


def test_the_lstm_workspace_is_the_one_onednn_allocates() -> None:
    """torch's fake kernel returns an empty workspace; the model gives the real kernel's size, page rounding, the
    leading dimensions that avoid multiples of 256 and wide inputs included."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from bench.planning.trace import lstm_workspace_bytes

    class Workspace(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten.mkldnn_rnn_layer.default:
                self.nbytes = out[3].untyped_storage().nbytes()
            return out

    for steps, batch, inputs, hidden in [(1, 1, 8, 16), (7, 3, 8, 24), (50, 40, 100, 8), (101, 7, 16, 264),
                                         (33, 5, 300, 64), (20, 9, 64, 128), (12, 2, 32, 256)]:
        lstm = torch.nn.LSTM(inputs, hidden, batch_first=True)
        with Workspace() as seen:
            lstm(torch.randn(batch, steps, inputs, requires_grad=True))
        assert seen.nbytes == lstm_workspace_bytes(steps, batch, inputs, hidden), (steps, batch, inputs, hidden)
