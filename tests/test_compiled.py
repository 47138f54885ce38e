"""Compiled steps: every model traces into one graph, compiled numerics equal eager's, and `bench profile
--compile` reports compile time apart from the step times, or refuses with one line what cannot run here."""

import json

import pytest
import torch

from bench.__main__ import main as bench
from variants.registry import BASES, build_config, build_model, single_change_names

TINY = {"feature_dim": 16, "temporal_layers": 1, "band_layers": 1}
# every module kind of the registry: the bases, and each single change on the optimized side (original+X swaps
# in a module that optimized already has; the scans each in a base: naive, chunked, chunked_ckpt below)
TRACED = [*BASES, *single_change_names("optimized"), "optimized+scan=chunked_ckpt"]


def tiny_config(name: str):
    base, _, scan = name.partition("+scan=")
    return build_config(base, **TINY, **({"scan": scan} if scan else {}))


@pytest.mark.parametrize("name", TRACED)
def test_every_model_traces_into_one_graph(name: str) -> None:
    """torch._dynamo.explain at a tiny size: no graph break (bsrnn's LSTMs traced with allow_rnn, as
    bench.profiling.compiled compiles them)."""
    model = build_model(tiny_config(name))
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        explained = torch._dynamo.explain(model)(torch.randn(1, 640) * 0.1)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--compile", "reduce-overhead"], "CUDA graphs need a CUDA device"),
    (["--compile", "fast"], "expected one of default, reduce-overhead, max-autotune"),
    (["--compile", "--ops-only"], "not --compare, --top-ops or --ops-only"),
])
def test_compile_that_cannot_run_is_refused_before_any_work(argv: list[str], fragment: str,
                                                            capsys: pytest.CaptureFixture) -> None:
    assert bench(["profile", "--variant", "optimized", "--no-track", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


def test_no_cpp_compiler_is_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import bench.profiling.compiled as compiled

    monkeypatch.setattr(compiled.shutil, "which", lambda _name: None)
    assert bench(["profile", "--variant", "optimized", "--no-track", "--compile"]) == 2
    assert "inductor needs a C++ compiler on the CPU and none of g++, c++, clang++" in capsys.readouterr().err


@pytest.mark.processes  # inductor compiles in its own worker processes (minutes of CPU here)
def test_compiled_steps_equal_eager_and_report_their_compile_time(capsys: pytest.CaptureFixture) -> None:
    """float32: outputs within 1e-6 and gradients within 1e-4 of the largest (measured 2e-8 and 2e-6)."""
    cfg = build_config("optimized", **TINY, scan="chunked")
    torch.manual_seed(0)
    model, wav = build_model(cfg), torch.randn(1, 1600) * 0.1
    eager = model(wav)
    eager.abs().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    out = torch.compile(model)(wav)
    out.abs().mean().backward()
    assert torch.allclose(out, eager, rtol=0, atol=1e-6)
    for want, got in zip(grads, (p.grad for p in model.parameters())):
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert bench(["profile", "--variant", "optimized", *[f"--set={k}={v}" for k, v in TINY.items()],
                  "--set", "scan=chunked", "--batch", "1", "--seconds", "0.05", "--repeats", "1", "--no-rss",
                  "--no-track", "--compile", "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["compiled"] == "default" and row["recompiles"] == 1  # grad mode: inference, then training
    assert row["compile_s_train"] > 10 * row["compiled_train_step_s"] > 0  # the first call, kept apart
    assert row["compiled_infer_step_s"] > 0 and row["infer_step_s"] > 0
