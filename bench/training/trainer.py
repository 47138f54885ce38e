"""Budgeted training with the reference recipe; validation on held-out speakers picks the checkpoint.

Recipe (MODELS.md): random crops (shorter files tiled), Adam, StepLR(10 epochs, 0.98), gradient
norm clip 5, loss 0.5 * L1(complex STFT) + 0.5 * L1(|STFT|^0.3); models with the dual
magnitude/phase decoder may add the phase term. Batches and crops are a pure function of
(seed, epoch, step), so a resumed run replays exactly what an uninterrupted one would.
"""

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bench.data.datasets import Pair, load_pair, rms_gain
from bench.training.checkpoint import save_checkpoint
from variants.config import ModelConfig
from variants.errors import MbsbenchError
from variants.layers import stft, wrap_phase


@dataclass(frozen=True)
class TrainSettings:
    """Budget and recipe; exactly one of epochs, steps, minutes bounds the run (steps win, then epochs)."""

    batch: int = 6
    crop_seconds: float = 2.0
    lr: float = 1e-3
    lr_step_epochs: int = 10
    lr_gamma: float = 0.98
    clip_norm: float = 5.0
    epochs: int | None = None
    steps: int | None = None
    minutes: float | None = None
    val_every: int = 50  # steps between validations (and at every epoch end)
    checkpoint_every: int = 50  # steps between resumable checkpoints
    phase_loss: bool = False  # 0.3 RI + 0.3 magnitude + 0.4 wrapped phase, dual decoder only
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch < 1 or self.crop_seconds <= 0.032:
            raise MbsbenchError(f"batch {self.batch} / crop {self.crop_seconds} s: expected >= 1 and > 0.032 s")
        if not (self.epochs or self.steps or self.minutes):
            raise MbsbenchError("training needs a budget: --epochs, --steps or --minutes")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise MbsbenchError(f"--lr {self.lr}: expected a positive number")


@dataclass
class TrainResult:
    """What happened: status ('ok', 'nan'), steps, best validation, curves, checkpoint paths."""

    status: str = "ok"
    reason: str = ""
    steps: int = 0
    epochs: float = 0.0
    seconds: float = 0.0
    best_step: int = -1
    best_val_loss: float = math.inf
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    best_path: Path | None = None
    last_path: Path | None = None


def se_loss(est: Tensor, clean: Tensor, cfg: ModelConfig, phase_term: bool = False) -> Tensor:
    """0.5 L1(RI) + 0.5 L1(|.|^0.3) on the model's STFT; with phase_term 0.3 RI + 0.3 mag + 0.4 phase."""
    est_spec, clean_spec = stft(est, cfg), stft(clean, cfg)
    ri = (torch.view_as_real(est_spec) - torch.view_as_real(clean_spec)).abs().mean()
    mag = (est_spec.abs().clamp_min(1e-8) ** 0.3 - clean_spec.abs().clamp_min(1e-8) ** 0.3).abs().mean()
    if not phase_term:
        return 0.5 * ri + 0.5 * mag
    phase = wrap_phase(est_spec.angle() - clean_spec.angle()).abs().mean()
    return 0.3 * ri + 0.3 * mag + 0.4 * phase


class CropSampler:
    """Batches of random crops, a pure function of (seed, epoch, index): resumable by construction."""

    def __init__(self, pairs: list[Pair], settings: TrainSettings, sample_rate: int):
        if not pairs:
            raise MbsbenchError("the training split is empty")
        self.pairs, self.s = pairs, settings
        self.crop = round(settings.crop_seconds * sample_rate)
        self.per_epoch = max(1, len(pairs) // settings.batch)
        self.cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _audio(self, pair: Pair) -> tuple[np.ndarray, np.ndarray]:
        if pair.id not in self.cache:
            self.cache[pair.id] = load_pair(pair)
        return self.cache[pair.id]

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """(clean, noisy), each (batch, crop), for global step `step`; both scaled by the noisy gain."""
        epoch, index = divmod(step, self.per_epoch)
        order = np.random.default_rng([self.s.seed, epoch]).permutation(len(self.pairs))
        rng = np.random.default_rng([self.s.seed, epoch, index, 1])
        cleans, noisies = [], []
        for k in order[index * self.s.batch : (index + 1) * self.s.batch]:
            clean, noisy = self._audio(self.pairs[k])
            if len(clean) < self.crop:  # shorter files are tiled, as the reference does
                clean, noisy = np.resize(clean, self.crop), np.resize(noisy, self.crop)
            start = int(rng.integers(len(clean) - self.crop + 1))
            clean, noisy = clean[start : start + self.crop], noisy[start : start + self.crop]
            gain = rms_gain(noisy)
            cleans.append(clean * gain)
            noisies.append(noisy * gain)
        return torch.from_numpy(np.stack(cleans)).float(), torch.from_numpy(np.stack(noisies)).float()


def validation_loss(model: nn.Module, pairs: list[Pair], cfg: ModelConfig, device: str, phase: bool) -> float:
    """Mean loss over full validation utterances (batch 1, normalised like training)."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for pair in pairs:
            clean, noisy = load_pair(pair)
            gain = rms_gain(noisy)
            c = torch.from_numpy(clean * gain).float()[None].to(device)
            n = torch.from_numpy(noisy * gain).float()[None].to(device)
            total += float(se_loss(model(n), c, cfg, phase))
    model.train()
    return total / max(len(pairs), 1)


class Trainer:
    """Runs the budgeted loop, validating, checkpointing (best.pt, last.pt) and resuming."""

    def __init__(self, model: nn.Module, cfg: ModelConfig, variant: str, train: list[Pair], val: list[Pair],
                 settings: TrainSettings, folder: Path, device: str = "cpu"):
        self.model, self.cfg, self.variant, self.s = model.to(device).train(), cfg, variant, settings
        self.val, self.folder, self.device = val, Path(folder), device
        self.sampler = CropSampler(train, settings, cfg.sample_rate)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, settings.lr_step_epochs, settings.lr_gamma)
        self.phase = settings.phase_loss and cfg.decoder == "dual_magphase"
        self.result = TrainResult(best_path=self.folder / "best.pt", last_path=self.folder / "last.pt")
        self.on_validate: Callable[[int, float], None] | None = None  # e.g. a study's pruning hook

    @property
    def total_steps(self) -> float:
        if self.s.steps:
            return self.s.steps
        return self.s.epochs * self.sampler.per_epoch if self.s.epochs else math.inf

    def save_last(self, step: int) -> None:
        extra = {"step": step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "result": asdict(self.result) | {"best_path": None, "last_path": None}, "settings": asdict(self.s)}
        save_checkpoint(self.result.last_path, self.model, self.cfg, self.variant, extra)

    def resume(self) -> int:
        """Restore last.pt; returns the step to continue from."""
        path = self.result.last_path
        if not path.is_file():
            raise MbsbenchError(f"--resume: nothing to resume in {self.folder} (no last.pt)")
        data = torch.load(path, map_location=self.device, weights_only=False)
        if data["variant"] != self.variant or data["config"] != self.cfg.to_dict():
            raise MbsbenchError(f"--resume: {path} belongs to variant {data['variant']!r}, not {self.variant!r}")
        self.model.load_state_dict(data["state_dict"])
        self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        saved = data["result"]
        self.result = TrainResult(**{k: v for k, v in saved.items() if k not in ("best_path", "last_path")},
                                  best_path=self.result.best_path, last_path=path)
        self.result.train_curve = [tuple(p) for p in saved["train_curve"]]
        self.result.val_curve = [tuple(p) for p in saved["val_curve"]]
        return int(data["step"])

    def validate(self, step: int) -> None:
        loss = validation_loss(self.model, self.val, self.cfg, self.device, self.phase)
        self.result.val_curve.append((step, loss))
        if self.on_validate is not None:
            self.on_validate(step, loss)
        if loss < self.result.best_val_loss:
            self.result.best_val_loss, self.result.best_step = loss, step
            save_checkpoint(self.result.best_path, self.model, self.cfg, self.variant, {"step": step})

    def train_step(self, step: int) -> float:
        clean, noisy = (t.to(self.device) for t in self.sampler.batch(step))
        self.optimizer.zero_grad(set_to_none=True)
        loss = se_loss(self.model(noisy), clean, self.cfg, self.phase)
        value = float(loss.detach())
        if not math.isfinite(value):
            return value
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.clip_norm)
        self.optimizer.step()
        return value

    def run(self, resume: bool = False, progress: Callable | None = None) -> TrainResult:
        step = self.resume() if resume else 0
        deadline = time.monotonic() + self.s.minutes * 60 if self.s.minutes else math.inf
        started = time.monotonic()
        while step < self.total_steps and time.monotonic() < deadline:
            loss = self.train_step(step)
            if not math.isfinite(loss):
                self.result.status, self.result.reason = "nan", f"loss {loss} at step {step}"
                break
            step += 1
            self.result.train_curve.append((step, loss))
            epoch_end = step % self.sampler.per_epoch == 0
            if epoch_end:
                self.scheduler.step()
            if step % self.s.val_every == 0 or epoch_end:
                self.validate(step)
            if step % self.s.checkpoint_every == 0:
                self.save_last(step)
            if progress:
                progress(step, loss)
        if self.result.status == "ok" and (not self.result.val_curve or self.result.val_curve[-1][0] != step):
            self.validate(step)
        self.result.steps, self.result.epochs = step, step / self.sampler.per_epoch
        self.result.seconds += time.monotonic() - started
        self.save_last(step)
        return self.result
