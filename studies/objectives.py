"""Objectives: profile-only ones (memory, time, MACs, params) and validation PESQ after a training budget.

Each returns the figure for one config, or raises TrialFailedError with a reason (an OOM, a NaN loss):
the runner records it as a failed trial and the study goes on. No objective reads the test split.
"""

import math
from dataclasses import replace
from pathlib import Path

from bench.compiling import compile_model
from bench.data.datasets import open_dataset
from bench.profiling.macs import count_macs
from bench.profiling.memory import MemoryCurve
from bench.profiling.timing import throughput
from bench.profiling.workload import ProfileSettings, measured_model
from bench.training.experiment import Shared, plan_runs, train_one
from bench.training.request import RunContext, RunRequest
from bench.training.trainer import TrainObserver
from studies.spec import OBJECTIVES, ObjectiveSettings, TrialFailedError
from variants.config import ModelConfig
from variants.registry import build_model, count_params


def peak_memory(cfg: ModelConfig, s: ObjectiveSettings) -> float:
    """Peak live bytes (MiB) of one training step at (batch, seconds)."""
    settings = ProfileSettings(batch=s.batch, seconds=s.seconds, device=s.device, rss=False)
    point = MemoryCurve(measured_model(cfg, s.device), cfg, settings).measure(s.batch, s.seconds, "train")
    if point["status"] != "ok":
        raise TrialFailedError(f"out of memory: {point['reason']}")
    return point["peak_bytes"] / 2**20


def step_time(cfg: ModelConfig, s: ObjectiveSettings) -> float:
    """Median training-step seconds at (batch, seconds)."""
    settings = ProfileSettings(batch=s.batch, seconds=s.seconds, device=s.device, repeats=3, rss=False)
    model = measured_model(cfg, s.device)
    if s.compile:  # the warm-up call compiles: the median is of the compiled steps after it
        model = compile_model(model, s.compile)
    return throughput(model, cfg, settings, "train")["train_step_s"]


def macs(cfg: ModelConfig, s: ObjectiveSettings) -> float:
    """MACs per second of audio (device-independent: counted on the CPU)."""
    return count_macs(build_model(cfg).eval(), cfg, s.seconds, "cpu")["macs_g_per_s"]


def validation_pesq(cfg: ModelConfig, s: ObjectiveSettings, trial=None) -> float:
    """Mean wideband PESQ of the best checkpoint on the validation split after the training budget, trained by
    the run path's train_one (pruned on validation loss)."""
    dataset = open_dataset(s.data)
    name = f"trial-{trial.number}" if trial is not None else "trial"
    out = Path(s.workdir) / (trial.study.study_name if trial is not None else "")
    request = RunRequest((name,), (s.seed,), s.data, steps=s.steps, minutes=s.minutes, batch=s.train_batch,
                         crop_seconds=s.crop_seconds, val_every=max(1, (s.steps or 200) // 4), out=out,
                         overwrite=True, compile=s.compile)  # a trial run again (queued again) starts over
    # scan auto: same math as the config's scan, more steps per budget
    run = plan_runs(request, {name: replace(cfg, scan="auto")}, dataset, 1)[0]
    shared = Shared(dataset, split="val", with_pcs=False, observers=(_pruner(trial),) if trial is not None else ())
    outcome = train_one(run, RunContext(s.device, workers=1), shared)
    if outcome.train.status != "ok":
        raise TrialFailedError(f"training {outcome.train.status}: {outcome.train.reason}")
    value = outcome.figures.get("pesq_wb", math.nan)
    if not math.isfinite(value):
        raise TrialFailedError("no validation utterance could be scored by PESQ")
    return float(value)


def _pruner(trial):
    """A Trainer observer that reports each validation loss to the trial and prunes it when Optuna says so."""
    import optuna

    class Pruner(TrainObserver):
        def validated(self, step: int, loss: float, _lr: float) -> None:
            trial.report(-loss, step)  # higher is better, like PESQ
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation loss {loss:.4f} at step {step}")

    return Pruner()


def evaluate_config(objective: str, cfg: ModelConfig, s: ObjectiveSettings, trial=None) -> tuple[float, ...]:
    """The objective's figures for one config, in the order of OBJECTIVES[objective][0]."""
    table = {
        "peak_mem_train_mib": lambda: peak_memory(cfg, s),
        "train_step_s": lambda: step_time(cfg, s),
        "macs_g_per_s": lambda: macs(cfg, s),
        "params": lambda: float(count_params(cfg)),
        "val_pesq_wb": lambda: validation_pesq(cfg, s, trial),
    }
    return tuple(table[name]() for name in OBJECTIVES[objective][0])
