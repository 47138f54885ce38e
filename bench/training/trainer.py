"""Budgeted training with the reference recipe; validation on held-out speakers picks the checkpoint.

Adam, StepLR(10 epochs, 0.98), gradient-norm clip 5 (MODELS.md); the loss and the sampler are in
recipe.py, the MetricGAN term in metricgan.py. A run stops at its budget, on a NaN loss (a result),
or at the end of the step during which Ctrl-C / SIGTERM arrived, with last.pt written so that
--resume continues exactly. Under torchrun each rank trains on its share of the global batch (DDP
averages the gradients: the single-process math up to reduction order); rank 0 validates,
checkpoints and reports, and every rank stops at the same step.
"""

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch._dynamo.utils import counters

from bench.compiling import compile_model, compile_wait, length_is_symbolic
from bench.console import status
from bench.data.datasets import Dataset, input_gain, load_pair
from bench.devices import autocast, parameter_dtype
from bench.interrupts import Interrupted, stop_requests
from bench.training import distributed
from bench.training.checkpoint import check_same_model, read_checkpoint, save_checkpoint, weights
from bench.training.metricgan import MetricGAN
from bench.training.recipe import CropSampler, se_loss
from bench.training.request import ON_THIS_CPU, PlannedRun, RunContext, TrainSettings
from variants.errors import MbsbenchError
from variants.layers import resolve_scan

# settings that change what the weights become: a resumed run must use the checkpoint's values
MATH_SETTINGS = ("batch", "crop_seconds", "lr", "lr_step_epochs", "lr_gamma", "clip_norm", "phase_loss", "seed",
                 "precision", "metricgan", "metricgan_weight", "world_size")


@dataclass
class TrainResult:
    """What happened: status ('ok', 'nan'), steps, seconds over all segments, best validation, curves."""

    status: str = "ok"
    reason: str = ""
    steps: int = 0
    epochs: float = 0.0
    seconds: float = 0.0  # of training, over every segment
    segments: list[float] = field(default_factory=list)  # seconds of each segment (a resume starts a new one)
    best_step: int = -1
    best_val_loss: float = math.inf
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    metricgan_from: int | None = None  # the first step whose loss has the MetricGAN term
    first_step_s: float = 0.0  # wall seconds of step 0 (with --compile: the compilation of the training step)
    compiled_graphs: int = 0  # with --compile: graphs dynamo made (training, and validation's per length kind)
    best_path: Path | None = None
    last_path: Path | None = None


class TrainObserver:
    """What a Trainer reports as it goes (a progress bar, an MLflow run, a study's pruner): no-ops here."""

    def step(self, step: int, loss: float) -> None:
        """After each optimizer step, with the batch's loss (the mean over every rank)."""

    def figures(self, step: int, values: dict[str, float]) -> None:
        """Other curves of a step (the MetricGAN losses and targets)."""

    def validated(self, step: int, loss: float, lr: float) -> None:
        """After each validation, with the learning rate the optimizer used."""

    def checkpointed(self, step: int) -> None:
        """After last.pt was written."""


class ProgressBar(TrainObserver):
    """A tqdm bar of the steps with the last loss."""

    def __init__(self, bar):
        self.bar = bar

    def step(self, step: int, loss: float) -> None:
        self.bar.n = step
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        self.bar.update(0)


class Trainer:
    """Runs the budgeted loop, validating, checkpointing (best.pt, last.pt) and resuming."""

    def __init__(self, model: nn.Module, run: PlannedRun, data: Dataset, context: RunContext = ON_THIS_CPU):
        settings, cfg, device, ranks = run.settings, run.config, context.device, context.ranks
        if settings.world_size != ranks.world:
            raise MbsbenchError(f"settings for {settings.world_size} ranks, but this world has {ranks.world}")
        self.dtype = parameter_dtype(settings.precision)
        self.model, self.cfg, self.variant, self.s = model.to(device, self.dtype).train(), cfg, run.variant, settings
        self.val, self.folder, self.device, self.fingerprint = data.split("val"), run.folder, device, data.fingerprint
        self.ranks, self.net = ranks, distributed.data_parallel(self.model, ranks, device)
        self.validator = self.model  # what validation calls: the model, or its compiled form
        if settings.compile:
            scan = resolve_scan(cfg, torch.device(device), self.dtype)
            self.net, self.validator = compiled_pair(self.net, self.model, settings.compile, scan)
            wait = compile_wait(cfg.arch, scan)
            if ranks.main and wait:
                status(f"the first training step compiles (torch.compile, mode {settings.compile}){wait}")
        self.sampler = CropSampler(data.split("train"), settings, cfg)
        # foreach: one multi-tensor op per update stage, not one op per parameter tensor (360 in original)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, foreach=True)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, settings.lr_step_epochs, settings.lr_gamma)
        self.phase = settings.phase_loss and cfg.decoder == "dual_magphase"
        self.gan = MetricGAN(cfg, settings, context) if settings.metricgan else None
        self.result = TrainResult(best_path=self.folder / "best.pt", last_path=self.folder / "last.pt")
        self.observers: list[TrainObserver] = []
        self.saved_extra: dict = {}  # kept in last.pt with the state (e.g. the MLflow run id)
        self._trained = 0.0  # seconds of training so far, over every segment

    @property
    def total_steps(self) -> float:
        if self.s.steps:
            return self.s.steps
        return self.s.epochs * self.sampler.per_epoch if self.s.epochs else math.inf

    def save_last(self, step: int) -> None:
        if not self.ranks.main:
            return
        if self.s.compile:  # every graph so far, the last validation's too (this segment's: dynamo starts afresh)
            self.result.compiled_graphs = int(counters["stats"]["unique_graphs"])
        extra = {"step": step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "result": asdict(self.result) | {"best_path": None, "last_path": None}, "settings": asdict(self.s),
                 "data_fingerprint": self.fingerprint} | self.saved_extra
        if self.gan is not None:
            extra["metricgan_state"] = self.gan.state()
        save_checkpoint(self.result.last_path, weights(self.model, self.cfg, self.variant) | extra)
        for observer in self.observers:
            observer.checkpointed(step)

    def resume(self) -> int:
        """Restore last.pt (every rank reads it); returns the step to continue from."""
        path = self.result.last_path
        data = read_checkpoint(path, self.device)
        check_same_model(data, path, self.cfg, self.variant)
        check_same_math(data, path, self.s, self.fingerprint)
        self.model.load_state_dict(data["state_dict"])
        self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        if self.gan is not None:
            self.gan.load(data["metricgan_state"])
        saved = data["result"]
        self.result = TrainResult(**{k: v for k, v in saved.items() if k not in ("best_path", "last_path")},
                                  best_path=self.result.best_path, last_path=path)
        self.result.train_curve = [tuple(p) for p in saved["train_curve"]]
        self.result.val_curve = [tuple(p) for p in saved["val_curve"]]
        self.saved_extra = {k: data[k] for k in data if k.startswith("run_")} | self.saved_extra
        return int(data["step"])

    def validation_loss(self) -> float:
        """Mean loss over full validation utterances (batch 1, normalised like training)."""
        self.model.eval()
        total, dtype = 0.0, next(self.model.parameters()).dtype
        with torch.no_grad():
            for pair in self.val:
                clean, noisy = load_pair(pair)
                gain = input_gain(noisy, self.cfg)
                c = torch.from_numpy(clean * gain)[None].to(self.device, dtype)
                n = torch.from_numpy(noisy * gain)[None].to(self.device, dtype)
                torch._dynamo.maybe_mark_dynamic(n, 1)  # a compiled validator: one graph for every length
                with autocast(self.device, self.s.precision):
                    enhanced = self.validator(n)
                total += float(se_loss(enhanced.to(dtype), c, self.cfg, self.phase))
        self.model.train()
        return total / max(len(self.val), 1)

    def validate(self, step: int) -> None:
        if not self.ranks.main:
            return
        loss = self.validation_loss()
        self.result.val_curve.append((step, loss))
        for observer in self.observers:
            observer.validated(step, loss, self.optimizer.param_groups[0]["lr"])
        if loss < self.result.best_val_loss:
            self.result.best_val_loss, self.result.best_step = loss, step
            save_checkpoint(self.result.best_path, weights(self.model, self.cfg, self.variant) | {"step": step})

    def _metricgan_on(self, step: int) -> bool:
        """From half-way through the budget: half the steps (or epochs), or half the minutes."""
        if self.result.metricgan_from is not None:
            return step >= self.result.metricgan_from
        half = self.total_steps / 2 <= step if self.total_steps != math.inf else False
        half = half or (self.s.minutes is not None and self._trained >= self.s.minutes * 30)
        on = distributed.any_rank(half, self.ranks, self.device)
        if on:
            self.result.metricgan_from = step
        return on

    def train_step(self, step: int) -> float:
        if step == 0:  # a compiled run's first step compiles: its time kept apart
            started = time.perf_counter()
            value = self._train_step(step)
            self.result.first_step_s = time.perf_counter() - started
            return value
        return self._train_step(step)

    def _train_step(self, step: int) -> float:
        clean, noisy = (t.to(self.device, self.dtype)
                        for t in self.sampler.batch(step, self.ranks.rank, self.ranks.world))
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.s.precision):
            enhanced = self.net(noisy)
            loss = se_loss(enhanced.to(self.dtype), clean, self.cfg, self.phase)
            if self.gan is not None and self._metricgan_on(step):
                loss = loss + self.s.metricgan_weight * self.gan.generator_term(clean, enhanced.to(self.dtype), step)
        value = distributed.mean(float(loss.detach()), self.ranks, self.device)
        if not math.isfinite(value):
            return value
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.clip_norm, foreach=True)
        self.optimizer.step()
        if self.gan is not None:
            self.gan.discriminator_step(clean, enhanced, step)
        return value

    def run(self, resume: bool = False) -> TrainResult:
        """Train to the budget; on Ctrl-C or SIGTERM, stop after the current step with last.pt written."""
        step = self.resume() if resume else 0
        earlier, started = self.result.seconds, time.monotonic()  # the budget counts earlier segments
        self.result.segments.append(0.0)
        budget = self.s.minutes * 60 if self.s.minutes else math.inf
        try:
            with stop_requests() as stop:
                while step < self.total_steps:
                    self._clock(earlier, started)
                    if distributed.any_rank(stop.requested or self._trained >= budget, self.ranks, self.device):
                        break
                    loss = self.train_step(step)
                    if not math.isfinite(loss):
                        self.result.status, self.result.reason = "nan", f"loss {loss} at step {step}"
                        break
                    step += 1
                    self._clock(earlier, started)
                    self._after_step(step, loss)
        finally:
            if self.gan is not None:
                self.gan.close()
        self._clock(earlier, started)
        self.result.steps, self.result.epochs = step, step / self.sampler.per_epoch
        if stop.requested:
            self.save_last(step)
            raise Interrupted(f"{self.result.last_path} at step {step} (--resume continues it)", stop.signum)
        if self.result.status == "ok" and (not self.result.val_curve or self.result.val_curve[-1][0] != step):
            self.validate(step)
        self.save_last(step)
        return self.result

    def _clock(self, earlier: float, started: float) -> None:
        self.result.segments[-1] = time.monotonic() - started
        self.result.seconds = self._trained = earlier + self.result.segments[-1]

    def _after_step(self, step: int, loss: float) -> None:
        self.result.train_curve.append((step, loss))
        for observer in self.observers if self.ranks.main else []:
            observer.step(step, loss)
            if self.gan is not None:
                observer.figures(step, self.gan.last)
        epoch_end = step % self.sampler.per_epoch == 0
        if epoch_end:
            self.scheduler.step()
        if step % self.s.val_every == 0 or epoch_end:
            self.validate(step)
        if step % self.s.checkpoint_every == 0:
            self.save_last(step)


def compiled_pair(net: nn.Module, model: nn.Module, mode: str, scan: str) -> tuple[nn.Module, nn.Module]:
    """The compiled training module and the validator: compiled too where one graph serves every utterance length
    (the scan is one operator), else the eager model (a Python-looped scan would compile again per length).
    Dynamo starts afresh, so that the run's graph count is its own."""
    torch._dynamo.reset()
    counters.clear()
    return compile_model(net, mode), compile_model(model, mode) if length_is_symbolic(scan) else model


def check_same_math(data: dict, path: Path, settings: TrainSettings, fingerprint: str) -> None:
    """A resumed run trains on the checkpoint's data with its recipe, or the command names what differs."""
    missing = [key for key in ("optimizer", "scheduler", "settings", "result") if key not in data]
    if missing:
        raise MbsbenchError(f"--resume: {path} holds weights without the training state ({', '.join(missing)} "
                            "missing: a copy of best.pt?); resume from the run's own last.pt, or start over with "
                            "--overwrite")
    defaults = asdict(TrainSettings(steps=1))  # a checkpoint older than a setting trained with its default
    saved = defaults | data.get("settings", {})
    ours = asdict(settings)
    differ = [f"{k}={saved.get(k)!r} (here {ours[k]!r})" for k in MATH_SETTINGS if saved.get(k) != ours[k]]
    if fingerprint and data.get("data_fingerprint", fingerprint) != fingerprint:
        differ.append(f"data fingerprint {data['data_fingerprint']} (here {fingerprint})")
    if differ:
        raise MbsbenchError(f"--resume: {path} was trained with {', '.join(differ)}; the settings that change "
                            "the math must match the checkpoint (change the flags, or start a new --out)")
