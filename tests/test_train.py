"""Training: a tiny end-to-end run, exact resume, NaN as a result, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.__main__ import main
from bench.data.datasets import open_dataset
from bench.tracking.store import runs_table
from bench.training.request import PlannedRun
from bench.training.trainer import Trainer, TrainSettings
from variants.registry import build, build_config
from variants.scan_cpu import compiler

TINY_DATA = "synth:seed=5,train=8,val=4,test=4"
TINY_MODEL = ["--set", "feature_dim=16", "--set", "temporal_layers=1"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MBSBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny_trainer(folder: Path, steps: int, lr: float = 1e-3) -> Trainer:
    torch.manual_seed(0)
    cfg = build_config("optimized", feature_dim=16, temporal_layers=1)
    data = open_dataset(TINY_DATA)
    settings = TrainSettings(batch=2, crop_seconds=0.5, steps=steps, val_every=2, checkpoint_every=2, lr=lr)
    run = PlannedRun("optimized", cfg, settings, folder)
    return Trainer(build("optimized", feature_dim=16, temporal_layers=1), run, data)


def test_resume_reaches_the_same_weights(tmp_path: Path) -> None:
    straight = tiny_trainer(tmp_path / "a", 6)
    straight.run()
    first = tiny_trainer(tmp_path / "b", 3)  # "killed" after 3 steps: last.pt holds step 3
    first.run()
    resumed = tiny_trainer(tmp_path / "b", 6)
    result = resumed.run(resume=True)
    assert result.steps == 6
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [s for s, _ in result.train_curve] == list(range(1, 7))


def test_nan_loss_is_a_result(tmp_path: Path) -> None:
    result = tiny_trainer(tmp_path, 30, lr=1e8).run()
    assert result.status == "nan" and "at step" in result.reason
    assert result.steps < 30


def test_best_checkpoint_follows_validation(tmp_path: Path) -> None:
    result = tiny_trainer(tmp_path, 4).run()
    losses = dict(result.val_curve)
    assert result.best_step == min(losses, key=losses.get)
    assert torch.load(result.best_path, weights_only=False)["step"] == result.best_step


def test_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["run", "--variant", "optimized", *TINY_MODEL, "--data", TINY_DATA, "--steps", "2", "--batch", "2",
            "--crop-seconds", "0.5", "--workers", "1", "--out", str(tmp_path / "runs"), "--tracking-uri", uri,
            "--format", "json", "--device", "cpu"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)  # the closing lines go to stderr under --format json
    assert rows[0]["variant"] == "noisy input" and rows[1]["variant"] == "optimized"
    folder = tmp_path / "runs" / "optimized-seed0"
    assert "optimized seed 0: 2 steps of batch 2 x 0.5 s crops = 0.50 epochs" in err and str(folder) in err
    assert "warning: optimized seed 0 trained on less than one epoch (0.50)" in err
    assert f"next: python -m reports tables --tracking-uri {uri}" in err
    assert rows[1]["status"] == "ok" and rows[1]["pesq_wb_n"] == 4
    run = runs_table(uri, "mbsbench-run").iloc[0]
    assert f"MLflow run {run['run_id']} in {uri}" in err
    assert run["pesq_wb"] == pytest.approx(rows[1]["pesq_wb"])
    assert run["noisy_pesq_wb"] == pytest.approx(rows[0]["pesq_wb"])
    assert run["feature_dim"] == "16" and run["data_fingerprint"]
    # auto's CPU pick (the C kernel where a compiler builds it, as tests/test_scan.py expects), never "chunked"
    assert run["scan"] == "auto" and run["scan_resolved"] == ("cpu_fused" if compiler() else "chunked_ckpt")


def run_cli(*argv: str, env_cache: Path) -> subprocess.CompletedProcess:
    import os

    env = os.environ | {"MBSBENCH_CACHE": str(env_cache)}
    return subprocess.run([sys.executable, "-m", "bench", *argv], capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["run", "--variant", "optimized", "--data", "mp3:/x", "--no-track"], "unknown data spec"),
        (["run", "--variant", "optimized", "--data", "paired:{empty},{empty}", "--steps", "1", "--no-track"],
         "no audio files"),
        (["run", "--variant", "optimized", *TINY_MODEL, "--data", TINY_DATA, "--steps", "1", "--resume",
          "--out", "{empty}", "--no-track", "--workers", "1"], "nothing to resume"),
        (["run", "--variant", "optimized", "--data", TINY_DATA, "--seeds", "a", "--no-track"], "--seeds"),
    ],
)
def test_run_bad_input(tmp_path: Path, argv: list[str], fragment: str) -> None:
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{empty}", str(tmp_path / "empty")) for a in argv]
    proc = run_cli(*argv, env_cache=tmp_path / "cache")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_ablate_parent_and_children(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["ablate", "--base", "optimized", "--changes", "d_state12", *TINY_MODEL, "--data", TINY_DATA,
            "--steps", "1", "--batch", "2", "--crop-seconds", "0.5", "--workers", "1", "--out", str(tmp_path / "r"),
            "--tracking-uri", uri, "--format", "json", "--device", "cpu"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in rows] == ["noisy input", "optimized", "optimized-d_state12"]
    runs = runs_table(uri, "mbsbench-run")
    parent = runs[runs["task"] == "ablate"]
    children = runs[runs["task"] == "run"]
    assert len(parent) == 1 and len(children) == 2
    assert (children["mlflow.parentRunId"] == parent["run_id"].iloc[0]).all()


def test_ablate_profile_only(capsys: pytest.CaptureFixture) -> None:
    argv = ["ablate", "--base", "original", "--changes", "expand1,band_mlp", "--profile-only", *TINY_MODEL,
            "--batch", "1", "--crop-seconds", "0.1", "--device", "cpu", "--format", "json", "--no-track"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in rows] == ["original", "original+expand1", "original+band_mlp"]
    assert rows[1]["params"] < rows[0]["params"] and all(r["status"] == "ok" for r in rows)


def test_ablate_profile_only_logs_each_profile(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Defect 3: the reports' ablation table reads these profiles, so each one is an MLflow run."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["ablate", "--base", "original", "--changes", "expand1", "--profile-only", *TINY_MODEL, "--batch", "1",
            "--crop-seconds", "0.1", "--device", "cpu", "--format", "json", "--tracking-uri", uri]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    runs = runs_table(uri, "mbsbench-profile").set_index("run_id")
    assert sorted(runs["variant"]) == ["original", "original+expand1"]
    for row in rows:
        assert runs.loc[row["run_id"], "params"] == row["params"]


def test_noisy_input_is_scored_once_per_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 8: the noisy row is computed once for all (variant, seed) pairs, not once per pair."""
    import bench.training.experiment as experiment

    real, calls = experiment.evaluate, []

    def counting(dataset, split="test", model=None, *args, **kwargs):
        calls.append(model is None)
        return real(dataset, split, model, *args, **kwargs)

    monkeypatch.setattr(experiment, "evaluate", counting)
    request = experiment.RunRequest(("optimized",), (0, 1), TINY_DATA, {"feature_dim": 16, "temporal_layers": 1},
                                    steps=1, batch=2, crop_seconds=0.5, out=tmp_path)
    outcome = experiment.run_experiment(request, experiment.RunContext("cpu", None, 1))
    assert [run.seed for run in outcome.runs] == [0, 1]
    assert calls.count(True) == 1 and calls.count(False) == 2


def test_ablate_again_skips_the_finished_pairs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["ablate", "--base", "optimized", "--changes", "d_state12", *TINY_MODEL, "--data", TINY_DATA,
            "--steps", "1", "--batch", "2", "--crop-seconds", "0.5", "--workers", "1", "--out", str(tmp_path / "r"),
            "--tracking-uri", uri, "--format", "json", "--device", "cpu", "-q"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(argv) == 0  # the same pairs, the same store: nothing is trained again
    again = json.loads(capsys.readouterr().out)
    assert [r["status"].split(" (")[0] for r in again[1:]] == ["finished earlier"] * 2
    assert [r["pesq_wb"] for r in again[1:]] == pytest.approx([r["pesq_wb"] for r in first[1:]])
    runs = runs_table(uri, "mbsbench-run")
    assert (runs["task"] == "run").sum() == 2 and (runs["task"] == "ablate").sum() == 1
    assert argv[11:13] == ["--steps", "1"]
    assert main([*argv[:12], "2", *argv[13:]]) == 2  # --steps 2 is another run: its folders are not overwritten
    assert "holds a run already" in capsys.readouterr().err


def test_a_run_below_the_noisy_input_says_so() -> None:
    """An 11-step model scored below the noisy input on STOI, SSNR and SI-SDR and the run ended 'ok' in silence."""
    from bench.training.experiment import ExperimentOutcome, RunOutcome
    from bench.training.request import TrainSettings
    from bench.training.trainer import TrainResult

    figures = {"pesq_wb": 1.6, "noisy_pesq_wb": 1.5, "stoi": 0.80, "noisy_stoi": 0.85, "ssnr": 1.0, "noisy_ssnr": 2.0}
    run = RunOutcome("optimized", 0, TrainResult(steps=11, epochs=0.04, seconds=300.0), None, figures, "abc",
                     TrainSettings(batch=4, crop_seconds=1.0, steps=11), Path("runs/optimized-seed0"))
    lines, warnings = ExperimentOutcome(None, [run], [], "sqlite:///m.db").closing()
    assert lines[0] == ("optimized seed 0: 11 steps of batch 4 x 1 s crops = 0.04 epochs, 5.0 min; results in "
                        "runs/optimized-seed0, MLflow run abc in sqlite:///m.db")
    assert warnings[-1] == "optimized seed 0 scores below the noisy input on STOI, SSNR"
    assert "less than one epoch (0.04)" in warnings[0] and lines[-1].startswith("next: python -m reports tables")


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--variant", "optimized", "--phase-loss"], "--phase-loss: optimized has no phase output (decoder mask3tap)"),
    (["--variant", "original", "--batch", "9"], "--batch 9: the training split of synth:"),
    (["--variant", "optimized", "--set", "sample_rate=0"], "sample_rate=0: expected 16000"),
])
def test_flags_never_silently_do_something_else(extra: list[str], fragment: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """Issue 24, item 7: the phase term was ignored while logged as on; the batch was cut to the split (and
    crashed under --nproc); sample_rate=0 ran and exited 0."""
    assert main(["run", *extra, *TINY_MODEL, "--data", TINY_DATA, "--steps", "1", "--out", str(tmp_path),
                  "--no-track", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not list(tmp_path.glob("*-seed0/*.pt"))  # refused before the first step


def test_resume_needs_a_training_state_and_metricgan_a_long_enough_crop(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """Issue 24, item 11: --resume from a copy of best.pt ended in KeyError 'optimizer'; --metricgan with crops
    too short for the discriminator crashed at the first step. One line each, before any work."""
    import shutil

    common = ["run", "--variant", "optimized", *TINY_MODEL, "--data", TINY_DATA, "--batch", "2", "--workers", "1",
              "--no-track", "--out", str(tmp_path)]
    assert main([*common, "--steps", "1", "--crop-seconds", "0.5", "-q"]) == 0
    folder = tmp_path / "optimized-seed0"
    shutil.copy(folder / "best.pt", folder / "last.pt")
    capsys.readouterr()
    assert main([*common, "--steps", "2", "--crop-seconds", "0.5", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds weights without the training state (optimizer, scheduler" in err[0], err
    assert main([*common, "--steps", "1", "--crop-seconds", "0.1", "--metricgan", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--crop-seconds 0.1: 13 STFT frames of optimized; the MetricGAN discriminator " \
                             "needs 16 (crops of 0.12 s or more)" in err[0], err
    assert main([*common, "--steps", "1", "--crop-seconds", "0.12", "--metricgan", "--overwrite", "-q"]) == 0


def test_a_corrupt_tracking_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from reports.__main__ import main as reports

    store = tmp_path / "corrupt.db"
    store.write_bytes(bytes(range(256)) * 20)
    for command in (lambda uri: main(["profile", "--variant", "optimized", "--seconds", "0.1", "--tracking-uri", uri]),
                    lambda uri: reports(["tables", "--tracking-uri", uri])):
        assert command(f"sqlite:///{store}") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not usable" in err[0] and "file is not a database" in err[0], err
