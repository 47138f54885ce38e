"""Several processes, one model: torchrun + gloo against one process; bf16; the MetricGAN term and its resume."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.__main__ import main as bench
from bench.data.datasets import open_dataset
from bench.tracking.store import metric_history, runs_table
from bench.training.request import PlannedRun, RunContext
from bench.training.trainer import Trainer, TrainObserver, TrainSettings
from variants.registry import build, build_config

TINY_DATA = "synth:seed=5,train=8,val=4,test=4"
TINY = ["--set", "feature_dim=16", "--set", "temporal_layers=1"]
RUN = ["run", "--variant", "optimized", *TINY, "--data", TINY_DATA, "--crop-seconds", "0.5", "--workers", "1",
       "--device", "cpu", "-q"]
BF16_TOLERANCE = 0.01  # relative difference of a step's loss in bf16 autocast from float32 (measured: 5e-5)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "optimized-seed0" / "last.pt", weights_only=False)["state_dict"]


@pytest.mark.processes
def test_two_gloo_ranks_train_what_one_process_trains(tmp_path: Path) -> None:
    """The global batch of 2 split over 2 ranks: the same weights and losses as 1 process (float64, 3 steps)."""
    common = [*RUN, "--batch", "2", "--steps", "3", "--val-every", "1", "--precision", "fp64"]
    one, two = f"sqlite:///{tmp_path}/one.db", f"sqlite:///{tmp_path}/two.db"
    assert bench([*common, "--out", str(tmp_path / "one"), "--tracking-uri", one]) == 0
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "bench", *common, "--out", str(tmp_path / "two"), "--tracking-uri", two],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("noisy input") == 1  # rank 0 alone prints
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)
    runs = {uri: runs_table(uri, "mbsbench-run") for uri in (one, two)}
    assert len(runs[two]) == 1  # rank 0 logs: one run, not two
    losses = [[v for _, v in metric_history(uri, runs[uri]["run_id"].iloc[0], "train_loss")] for uri in (one, two)]
    assert len(losses[0]) == 3 and losses[1] == pytest.approx(losses[0], abs=1e-6)
    run = runs[two].iloc[0]
    assert (run["train_world_size"], run["train_batch"], run["train_batch_per_rank"]) == \
        ("2", "2", "1")
    assert run["train_precision"] == "fp64" and run["train_recipe"] == "default"


@pytest.mark.processes
def test_nproc_relaunches_and_checks_the_batch(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", *RUN, "--batch", "3", "--steps", "1", "--nproc", "2",
                           "--no-track", "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300,
                          env=os.environ | {"OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert errors and all("--batch 3: the global batch must divide by the world size 2" in e for e in errors)


def tiny_trainer(folder: Path, steps: int = 6, precision: str = "fp32", metricgan: bool = False) -> Trainer:
    torch.manual_seed(0)
    cfg = build_config("optimized", feature_dim=16, temporal_layers=1)
    data = open_dataset(TINY_DATA)
    settings = TrainSettings(batch=2, crop_seconds=0.5, steps=steps, val_every=2, checkpoint_every=1,
                             precision=precision, metricgan=metricgan)
    run = PlannedRun("optimized", cfg, settings, folder)
    return Trainer(build("optimized", feature_dim=16, temporal_layers=1), run, data, RunContext(workers=2))


def test_bf16_step_is_close_to_fp32(tmp_path: Path) -> None:
    losses = {p: tiny_trainer(tmp_path / p, precision=p).train_step(0) for p in ("fp32", "bf16")}
    assert losses["bf16"] != losses["fp32"]  # autocast really computed in bfloat16
    assert abs(losses["bf16"] - losses["fp32"]) / losses["fp32"] < BF16_TOLERANCE


class Interrupt(TrainObserver):
    """Sends this process a SIGINT after a step: the trainer finishes it, writes last.pt and stops."""

    def __init__(self, at: int):
        self.at = at

    def step(self, step: int, loss: float) -> None:
        if step == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_metricgan_term_and_an_exact_resume(tmp_path: Path) -> None:
    plain = tiny_trainer(tmp_path / "plain").run()
    straight = tiny_trainer(tmp_path / "gan", metricgan=True)
    disc_before = {k: v.clone() for k, v in straight.gan.module.state_dict().items()}
    targets: list[float] = []

    class Targets(TrainObserver):
        def figures(self, step: int, values: dict[str, float]) -> None:
            targets.extend([values["gan_target_min"], values["gan_target_max"]])

    straight.observers.append(Targets())
    result = straight.run()
    assert result.metricgan_from == 3  # half of 6 steps: the term joins the loss of the 4th step
    assert [v for _, v in result.train_curve[:3]] == [v for _, v in plain.train_curve[:3]]
    assert all(a != b for (_, a), (_, b) in zip(result.train_curve[3:], plain.train_curve[3:]))
    moved = straight.gan.module.state_dict()
    assert any(not torch.equal(disc_before[k], moved[k]) for k in moved)  # the discriminator trained
    assert len(targets) == 12 and all(0.3 <= t <= 1 for t in targets)
    killed = tiny_trainer(tmp_path / "killed", metricgan=True)
    killed.observers.append(Interrupt(at=2))
    with pytest.raises(KeyboardInterrupt, match="at step 2"):
        killed.run()
    resumed = tiny_trainer(tmp_path / "killed", metricgan=True).run(resume=True)
    assert resumed.train_curve == result.train_curve
    done = {name: torch.load(tmp_path / name / "last.pt", weights_only=False) for name in ("gan", "killed")}
    for part in ("state_dict",):
        assert all(torch.equal(done["gan"][part][k], done["killed"][part][k]) for k in done["gan"][part])
    disc = [done[name]["metricgan_state"]["discriminator"] for name in ("gan", "killed")]
    assert all(torch.equal(disc[0][k], disc[1][k]) for k in disc[0])


def test_reference_recipe_turns_metricgan_on(tmp_path: Path) -> None:
    from bench.training.request import RunRequest, train_settings

    reference = train_settings(RunRequest(("optimized",), recipe="reference"), "synth", 0)
    assert (reference.metricgan, reference.batch, reference.crop_seconds, reference.epochs) == (True, 6, 2.0, 120)
    synth = train_settings(RunRequest(("optimized",)), "synth", 0)
    assert not synth.metricgan and (synth.steps, synth.minutes, synth.batch, synth.crop_seconds) == (240, None, 4, 1.0)
    steps = train_settings(RunRequest(("optimized",), steps=30), "synth:seed=3", 0)  # one recipe, any budget
    assert (steps.steps, steps.batch, steps.crop_seconds) == (30, 4, 1.0)
    off = train_settings(RunRequest(("optimized",), recipe="reference", metricgan=False, steps=10), "vbd:x", 0)
    assert not off.metricgan and off.steps == 10 and off.epochs is None
    assert json.dumps(reference.world_size) == "1"


def nproc_run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *RUN, "--batch", "2", "--nproc", "2", *argv],
                          capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"},
                          cwd=cwd)


@pytest.mark.processes
def test_nproc_errors_are_the_launchers_one_line(tmp_path: Path) -> None:
    """Issue 24, item 8: a store unreachable or a resume mismatch under --nproc was torchrun's 43-line report
    and exit 1: checked once before the ranks start, one line, exit 2."""
    down = nproc_run("--steps", "1", "--tracking-uri", "http://127.0.0.1:9", "--out", str(tmp_path / "o"),
                     cwd=tmp_path)
    assert down.returncode == 2 and down.stderr.count("\n") == 1 and "unreachable" in down.stderr, down.stderr
    assert bench([*RUN, "--batch", "2", "--steps", "1", "--no-track", "--out", str(tmp_path / "r")]) == 0
    other = nproc_run("--steps", "2", "--lr", "0.5", "--resume", "--no-track", "--out", str(tmp_path / "r"),
                      cwd=tmp_path)
    assert other.returncode == 2 and other.stderr.count("\n") == 1 and "lr" in other.stderr, other.stderr


@pytest.mark.processes
def test_a_killed_rank_is_named_and_the_others_stop(tmp_path: Path) -> None:
    import time

    launcher = subprocess.Popen([sys.executable, "-m", "bench", *RUN, "--batch", "2", "--nproc", "2", "--steps",
                                 "100000", "--checkpoint-every", "2", "--no-track", "--out", str(tmp_path / "o")],
                                stderr=subprocess.PIPE, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"},
                                cwd=tmp_path)
    last = tmp_path / "o" / "optimized-seed0" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.is_file() and time.monotonic() < deadline:
        assert launcher.poll() is None, launcher.communicate()
        time.sleep(0.2)
    ranks = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    rank1 = next(pid for pid in ranks if "RANK=1\0" in Path(f"/proc/{pid}/environ").read_text())
    os.kill(int(rank1), signal.SIGKILL)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 128 + signal.SIGKILL, err
    assert "error: rank 1 died of SIGKILL; the other ranks were stopped; the same command with --resume" in err
    assert "Traceback" not in err and "ChildFailedError" not in err
    assert subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True).stdout == b""
