"""What every measurement runs: the conditions, a seeded model, its optimizer and an input batch."""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.devices import autocast
from variants.config import ModelConfig
from variants.errors import MbsbenchError
from variants.registry import build_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MIN_SECONDS = 0.032  # one STFT frame at 16 kHz


@dataclass(frozen=True)
class ProfileSettings:
    """Conditions of one profile: batch, seconds of audio per utterance, device, dtype, budget."""

    batch: int = 6
    seconds: float = 2.0
    device: str = "cpu"
    dtype: str = "float32"
    budget_gb: float = 12.0
    lengths: tuple[float, ...] = ()
    repeats: int = 3
    warmup: int = 1
    rss: bool = False  # also the peak RSS of each step in a fresh process (bench.profiling.rss)
    ops_only: bool = False  # parameters, MACs and op counts only (no step is timed or measured)
    strict_timing: bool = False  # a row timed while other processes used half a core or more is refused
    predict: bool = False  # also the planner's predicted CUDA peaks and max batch within budget_gb (bench plan)
    compile: str | None = None  # also the steps under torch.compile in this mode (bench.profiling.compiled)

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise MbsbenchError(f"--batch {self.batch}: expected a positive integer")
        for seconds in (self.seconds, *self.lengths):
            if not seconds > MIN_SECONDS:
                raise MbsbenchError(f"length {seconds} s: expected more than one STFT frame ({MIN_SECONDS} s)")
        if self.dtype not in DTYPES:
            raise MbsbenchError(f"--dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if not self.budget_gb > 0:
            raise MbsbenchError(f"--budget-gb {self.budget_gb}: expected a positive number")
        if self.repeats < 1:
            raise MbsbenchError(f"--repeats {self.repeats}: expected a positive integer")


def samples(cfg: ModelConfig, seconds: float) -> int:
    return round(seconds * cfg.sample_rate)


def training_step(model: nn.Module, wav: Tensor, optimizer: torch.optim.Optimizer, dtype: str = "float32") -> None:
    """Forward, L1 loss against the input, backward, optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(str(wav.device), dtype):
        loss = (model(wav).float() - wav).abs().mean()
    loss.backward()
    optimizer.step()


def inference_step(model: nn.Module, wav: Tensor, dtype: str = "float32") -> None:
    """One no-grad forward pass."""
    with torch.no_grad(), autocast(str(wav.device), dtype):
        model(wav)


PRIME_SAMPLES = 4096  # Workload.prime's input: 33 STFT frames


@dataclass
class Workload:
    """A model, its optimizer (state created) and an input batch on a device."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    wav: Tensor
    dtype: str

    def train(self) -> None:
        training_step(self.model, self.wav, self.optimizer, self.dtype)

    def infer(self) -> None:
        inference_step(self.model, self.wav, self.dtype)

    def step(self, mode: str):
        """The bound step of a mode: 'train' or 'infer'."""
        return self.train if mode == "train" else self.infer

    def fixed_bytes(self) -> int:
        """Bytes that do not grow with the batch: parameters, their gradients, optimizer state."""
        tensors = [t for t in self.resident() if t is not self.wav]
        tensors += [p.grad for p in self.model.parameters() if p.grad is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def prime(self) -> None:
        """Leave what a training step leaves (the gradients of the parameters the model uses, the optimizer's
        state) at a fraction of a step's cost: one step on the first PRIME_SAMPLES of one utterance, so that the
        next whole step is a steady one (a first step at batch 6, 2 s took 10.8 s here, a steady one 4.6 s)."""
        training_step(self.model, self.wav[:1, :PRIME_SAMPLES], self.optimizer, self.dtype)

    def resident(self) -> list[Tensor]:
        state = [t for s in self.optimizer.state.values() for t in s.values() if isinstance(t, Tensor)]
        return [*self.model.parameters(), *state, self.wav]


def make_workload(model: nn.Module, cfg: ModelConfig, batch: int, seconds: float, device: str, dtype: str) -> Workload:
    """The model in training mode, a fresh Adam with tiny steps (the weights barely move), a random batch."""
    model.train()
    for p in model.parameters():
        p.grad = None
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-9, foreach=True)  # as the trainer's
    wav = torch.randn(batch, samples(cfg, seconds), device=device) * 0.1
    return Workload(model, optimizer, wav, dtype)


def measured_model(cfg: ModelConfig, device: str) -> nn.Module:
    """The model every measurement uses: built after seeding 0, on the device."""
    torch.manual_seed(0)
    return build_model(cfg).to(device)
