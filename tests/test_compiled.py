"""Compiled steps: every model traces into one graph, compiled numerics equal eager's, and `bench profile
--compile` reports compile time apart from the step times, or refuses with one line what cannot run here."""

import json

import pytest
import torch

from bench.__main__ import main as bench
from variants.registry import BASES, build_config, build_model, single_change_names

TINY = {"feature_dim": 16, "temporal_layers": 1, "band_layers": 1}
# every module kind of the registry: the bases, and each single change on the optimized side (original+X swaps
# in a module that optimized already has; the scans each in a base: naive, chunked; chunked_ckpt and the C kernel's
# operators below)
TRACED = [*BASES, *single_change_names("optimized"), "optimized+scan=chunked_ckpt", "optimized+scan=cpu_fused"]


def tiny_config(name: str):
    base, _, scan = name.partition("+scan=")
    return build_config(base, **TINY, **({"scan": scan} if scan else {}))


@pytest.mark.compiles
@pytest.mark.parametrize("name", TRACED)
def test_every_model_traces_into_one_graph(name: str) -> None:
    """torch._dynamo.explain at a tiny size: no graph break (bsrnn's LSTMs traced with allow_rnn, as
    bench.profiling.compiled compiles them)."""
    model = build_model(tiny_config(name))
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        explained = torch._dynamo.explain(model)(torch.randn(1, 640) * 0.1)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


PROFILE = ["profile", "--variant", "optimized", "--no-track"]
RUN = ["run", "--variant", "optimized", "--steps", "1", "--no-track"]
ABLATE = ["ablate", "--base", "optimized", "--profile-only", "--no-track"]


@pytest.mark.parametrize(("argv", "fragment"), [
    ([*PROFILE, "--compile", "reduce-overhead"], "CUDA graphs need a CUDA device"),
    ([*PROFILE, "--compile", "fast"], "expected one of default, reduce-overhead, max-autotune"),
    ([*PROFILE, "--compile", "--ops-only"], "not --compare, --top-ops or --ops-only"),
    ([*RUN, "--compile", "reduce-overhead"], "CUDA graphs need a CUDA device"),
    ([*RUN, "--compile", "fast"], "--compile 'fast': expected one of default, reduce-overhead, max-autotune"),
    ([*ABLATE, "--compile", "reduce-overhead"], "CUDA graphs need a CUDA device"),
])
def test_compile_that_cannot_run_is_refused_before_any_work(argv: list[str], fragment: str, tmp_path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """In every room that compiles: one line, exit 2, nothing written (no run folder)."""
    out = ["--out", str(tmp_path / "runs")] if argv[0] != "profile" else []
    assert bench([*argv, *out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "runs").exists()


def test_a_study_compiles_only_in_a_mode_its_workers_can_run(tmp_path, capsys: pytest.CaptureFixture) -> None:
    """studies create --compile: the mode checked when the study is made, and again against each worker's device
    before its first trial (reduce-overhead needs CUDA: a CPU worker refuses it and the queue stays as it is)."""
    from studies.__main__ import main as studies

    storage = ["--storage", f"sqlite:///{tmp_path}/s.db"]
    assert studies(["create", "--space", "d_state", "--objective", "time", "--compile", "fast", *storage,
                    "--no-track"]) == 2
    assert "--compile 'fast': expected one of default" in capsys.readouterr().err
    assert studies(["create", "--space", "d_state", "--choices", "d_state=4,8", "--objective", "time", "--compile",
                    "reduce-overhead", "--study-name", "cg", *storage, "--no-track"]) == 0
    capsys.readouterr()
    assert studies(["work", "cg", "--device", "cpu", *storage]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA graphs need a CUDA device" in err[0], err


def test_no_cpp_compiler_is_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import bench.compiling as compiled

    monkeypatch.setattr(compiled.shutil, "which", lambda _name: None)
    assert bench([*PROFILE, "--compile"]) == 2
    assert "inductor needs a C++ compiler on the CPU and none of g++, c++, clang++" in capsys.readouterr().err


@pytest.mark.compiles
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
    captured = capsys.readouterr()
    row = json.loads(captured.out)[0]
    assert "(scan chunked loops in Python and the graph unrolls its loops: compiling can take minutes" in captured.err
    assert row["compiled"] == "default" and row["recompiles"] == 1  # grad mode: inference, then training
    assert row["compile_s_train"] > 10 * row["compiled_train_step_s"] > 0  # the first call, kept apart
    assert row["compiled_infer_step_s"] > 0 and row["infer_step_s"] > 0


def short_val_dataset(folder, lengths: tuple[int, ...]):
    """The tiny synth corpus with validation utterances cut to `lengths` samples (the Triton interpreter is slow)."""
    import soundfile

    from bench.data.datasets import Dataset, Pair, load_pair, open_dataset

    data = open_dataset("synth:seed=5,train=8,val=4,test=4")
    pairs = []
    for index, (pair, length) in enumerate(zip(data.split("val"), lengths)):
        clean, noisy = load_pair(pair)
        paths = [folder / f"{kind}{index}.wav" for kind in ("clean", "noisy")]
        for path, audio in zip(paths, (clean, noisy)):
            soundfile.write(path, audio[:length], 16000, subtype="FLOAT")
        pairs.append(Pair(f"v{index}", paths[0], paths[1], pair.speaker))
    return Dataset("synth-short-val", {"train": data.split("train"), "val": pairs})


@pytest.mark.compiles
@pytest.mark.parametrize(("scan", "validation_compiled"), [("chunked", False), ("triton", True), ("cpu_fused", True)])
def test_a_compiled_run_validates_every_length_with_one_graph_or_eagerly(scan: str, validation_compiled: bool,
                                                                        tmp_path, monkeypatch, capsys) -> None:
    """bench run --compile: the training step compiled, and validation on whole utterances of three lengths
    compiled where one graph serves them all (the Triton scan and the C kernel are one operator each; Triton's
    interpreter runs the first here), else
    eager (the chunked scan's Python loop would compile once per length). aot_eager stands in for inductor: the
    graphs and guards are dynamo's, whatever the backend (inductor's numerics: the test above)."""
    from torch._dynamo.utils import counters

    import bench.training.trainer as trainer_module
    from bench.training.request import PlannedRun, TrainSettings

    if scan == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    compiled = []

    def aot_eager(module, mode):
        compiled.append(mode)
        return torch.compile(module, backend="aot_eager")

    monkeypatch.setattr(trainer_module, "compile_model", aot_eager)
    cfg = build_config("optimized", **TINY, scan=scan)
    settings = TrainSettings(batch=1, crop_seconds=0.1, steps=1, val_every=1, checkpoint_every=1, compile="default")
    torch.manual_seed(0)
    data = short_val_dataset(tmp_path, (4000, 4700, 5400))
    trainer = trainer_module.Trainer(build_model(cfg), PlannedRun("optimized", cfg, settings, tmp_path), data)
    result = trainer.run()
    assert result.status == "ok" and result.first_step_s > 0
    assert compiled == ["default"] * (2 if validation_compiled else 1)
    assert (trainer.validator is not trainer.model) == validation_compiled
    # the training graph, then (validation compiled) the first length's and one for the other two
    assert result.compiled_graphs == counters["stats"]["unique_graphs"] == (3 if validation_compiled else 1)
    said = "the first training step compiles (torch.compile, mode default) (scan chunked loops in Python"
    assert (said in capsys.readouterr().err) == (scan == "chunked")  # the wait said before it, where it is long


def test_the_wait_of_a_compile_is_said_for_a_looped_scan_only() -> None:
    from bench.compiling import compile_wait

    assert "(scan naive loops in Python and the graph unrolls its loops" in compile_wait("mbsnet", "naive")
    assert "scan chunked_ckpt loops in Python" in compile_wait("mbsnet", "chunked_ckpt")
    assert compile_wait("mbsnet", "cpu_fused") == compile_wait("mbsnet", "triton") == ""  # one operator each
    assert compile_wait("bsrnn", "chunked") == ""  # no scan in the model
