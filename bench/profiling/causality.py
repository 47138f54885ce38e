"""Measured causality: the earliest output sample that a change of the input at one instant reaches.

The model runs twice in float64 on the same noise, once with an impulse added at sample p. A causal model with
an STFT front end changes no output sample before p - lookahead, the same at every p: n_fft - hop - 1 samples
of window overlap (383 for a 512 window, 128 hop), plus a hop for each frame a layer reads ahead. Its latency
is that lookahead plus the hop an output block waits to fill: n_fft - 1 samples (31.9 ms) for a causal model,
one window. A model that reads the whole future (a normalisation over the utterance, a backward scan)
changes samples from the start: its lookahead grows with p, and it cannot stream. Forward hooks name the
modules: the innermost ones whose output changes at an earlier frame than their input does.
"""

import re
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from variants.config import ModelConfig
from variants.spectral import SpectralEnhancer

FRAMES = 101  # frames of the probe: a length no other axis of the models has, so the time axis is found by size
INSTANTS = (0.4, 0.6)  # where the impulse lands, as a fraction of the probe (away from the edges' reflect padding)
INDEX = re.compile(r"[.]\d+(?=[.]|$)")  # a module list's index in a module name


@dataclass
class Causality:
    """A variant's probe: the lookahead (samples) at each instant and seed, and the modules that read ahead."""

    lookaheads: list[int]
    hop: int
    sample_rate: int
    reads_ahead: list[str] = field(default_factory=list)

    @property
    def causal(self) -> bool:
        """Whether the lookahead is bounded (the same wherever the input changes): the model can stream."""
        return len(set(self.lookaheads)) == 1

    @property
    def latency_samples(self) -> int:
        return max(self.lookaheads) + self.hop

    @property
    def latency_ms(self) -> float:
        return 1000 * self.latency_samples / self.sample_rate


class FrameWatch:
    """Forward hooks on every submodule: each call's inputs and output, by module name, in call order."""

    def __init__(self, model: nn.Module):
        self.calls: list[tuple[str, list[Tensor], list[Tensor]]] = []
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in model.named_modules() if name]

    def _hook(self, name: str):
        def seen(_module, args, out) -> None:
            ins, outs = ([t.detach() for t in _flat(items) if isinstance(t, Tensor)] for items in (args, out))
            self.calls.append((name, ins, outs))
        return seen

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _flat(items) -> list:
    if isinstance(items, Tensor):
        return [items]
    if isinstance(items, list | tuple):
        return [t for item in items for t in _flat(item)]
    return []


def first_changed_frame(one: Tensor, other: Tensor, frames: int, tol: float) -> int | None:
    """The earliest frame at which two runs' tensors differ, along the one axis of `frames` length (None: the
    tensor has no such axis, or they agree)."""
    axes = [axis for axis, size in enumerate(one.shape) if size == frames]
    if len(axes) != 1 or one.shape != other.shape:
        return None
    changed = ((one - other).abs() > tol).movedim(axes[0], 0).reshape(frames, -1).any(dim=1)
    return int(changed.nonzero()[0, 0]) if changed.any() else None


def probe(model: SpectralEnhancer, cfg: ModelConfig, seeds: tuple[int, ...] = (0, 1)) -> Causality:
    """The lookahead (samples) over INSTANTS x seeds; where it is more than the window's overlap, the modules that
    read ahead (hooked on one instant: the hooks keep every module's output, the cost of the probe)."""
    model = model.double().eval()
    samples = (FRAMES - 1) * cfg.hop
    lookaheads = []
    for seed in seeds:
        noise = _noise(samples, seed)
        with torch.no_grad():
            out = model(noise)
            for at in (int(instant * samples) for instant in INSTANTS):
                changed = ((out - model(_bumped(noise, at))).abs() > 1e-12 * out.abs().max()).nonzero()
                lookaheads.append(at - int(changed[0, 1]) if len(changed) else 0)
    culprits = []
    if max(lookaheads) > cfg.n_fft - cfg.hop - 1:  # more than the STFT's own: some module reads ahead
        noise = _noise(samples, seeds[0])
        (_, calls), (_, calls2) = _run(model, noise), _run(model, _bumped(noise, int(INSTANTS[0] * samples)))
        culprits = _readers_ahead(calls, calls2, model)
    return Causality(lookaheads, cfg.hop, cfg.sample_rate, culprits)


def _noise(samples: int, seed: int) -> Tensor:
    """The probe's input: seeded float64 noise, batch 1."""
    return torch.randn(1, samples, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.1


def _bumped(noise: Tensor, at: int) -> Tensor:
    bumped = noise.clone()
    bumped[0, at] += 1.0
    return bumped


def _run(model: nn.Module, wav: Tensor) -> tuple[Tensor, list]:
    watch = FrameWatch(model)
    try:
        with torch.no_grad():
            out = model(wav)
    finally:
        watch.remove()
    return out, watch.calls


def _readers_ahead(calls: list, calls2: list, model: nn.Module) -> list[str]:
    """The innermost modules whose output changes at an earlier frame than their input does."""
    ahead = []
    for (name, ins, outs), (_, ins2, outs2) in zip(calls, calls2):
        tol = 1e-12 * max([float(t.abs().max()) for t in ins + outs if t.numel()] or [1.0])
        frame_in = _earliest([first_changed_frame(a, b, FRAMES, tol) for a, b in zip(ins, ins2)])
        frame_out = _earliest([first_changed_frame(a, b, FRAMES, tol) for a, b in zip(outs, outs2)])
        if frame_in is not None and frame_out is not None and frame_out < frame_in:
            ahead.append(name)
    innermost = [name for name in ahead if not any(other.startswith(name + ".") for other in ahead)]
    named = [f"{INDEX.sub('.*', name)} ({type(model.get_submodule(name)).__name__})"
             for name in innermost]  # band_split.run_norms.* for every run of bands
    return list(dict.fromkeys(named))


def _earliest(frames: list[int | None]) -> int | None:
    known = [f for f in frames if f is not None]
    return min(known) if known else None
