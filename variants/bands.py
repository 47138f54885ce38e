"""Per-band layers, computed one run of equal-width bands at a time: the band split and the band heads.

31 bands have only 5 widths (2, 3, 8, 16, 17 bins) in 5 runs of consecutive bands, so a run is one
normalisation and one batched matmul instead of one small Linear per band: 31 launches become 5.
The parameters are exactly the per-band ones (no padding), held per run as (bands, in, out).
Checkpoints written with one Linear and one GroupNorm per band load unchanged (converted on load).
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GROUP_NORM_EPS = 1e-5  # nn.GroupNorm's default, as the reference's per-band GroupNorm(1, C)


def width_runs(widths: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(first band, bands, width) of each run of consecutive bands of equal width."""
    runs: list[list[int]] = []
    for band, width in enumerate(widths):
        if runs and runs[-1][2] == width:
            runs[-1][1] += 1
        else:
            runs.append([band, 1, width])
    return [tuple(run) for run in runs]


class RunNorm(nn.Module):
    """GroupNorm(1, C) of each band of a run over its (T x C) block, or over each frame's C alone (per_frame: causal):
    x (B, bands, T, C), affine per band."""

    def __init__(self, bands: int, channels: int, per_frame: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(bands, channels))
        self.bias = nn.Parameter(torch.zeros(bands, channels))
        self.dims = 1 if per_frame else 2

    def forward(self, x: Tensor) -> Tensor:
        normed = F.layer_norm(x, x.shape[-self.dims:], eps=GROUP_NORM_EPS)  # over (T, C), or C, per (B, band)
        return torch.addcmul(self.bias[:, None], normed, self.weight[:, None])


class RunLinear(nn.Module):
    """One Linear(in -> out) per band of a run, as one batched matmul: x (B, bands, T, in) -> (B, bands, T, out)."""

    def __init__(self, bands: int, features_in: int, features_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(bands, features_in, features_out))
        self.bias = nn.Parameter(torch.zeros(bands, features_out))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference's init of each band's Linear: Xavier-uniform weight, zero bias."""
        _, features_in, features_out = self.weight.shape
        bound = math.sqrt(6.0 / (features_in + features_out))
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(x, self.weight) + self.bias[:, None]


class BandSplit(nn.Module):
    """Per band of w bins: re/im as 2w features, GroupNorm(1, 2w) over (2w x T), Linear(2w -> N)."""

    def __init__(self, widths: tuple[int, ...], channels: int, per_frame: bool = False):
        super().__init__()
        self.widths, self.runs = tuple(widths), width_runs(tuple(widths))
        self.run_norms = nn.ModuleList(RunNorm(bands, 2 * w, per_frame) for _, bands, w in self.runs)
        self.run_fcs = nn.ModuleList(RunLinear(bands, 2 * w, channels) for _, bands, w in self.runs)
        self._register_load_state_dict_pre_hook(self._from_per_band)

    def forward(self, spec: Tensor) -> Tensor:
        """Band features (B, T, K, N) of a complex STFT (B, F, T)."""
        return self.from_real(torch.view_as_real(spec))

    def from_real(self, x: Tensor) -> Tensor:
        """Band features (B, T, K, N) of an STFT as real and imaginary parts (B, F, T, 2)."""
        b, _, t, _ = x.shape
        out, first_bin = [], 0
        for (_, bands, w), norm, fc in zip(self.runs, self.run_norms, self.run_fcs):
            part = x[:, first_bin : first_bin + bands * w].unflatten(1, (bands, w))  # (B, bands, w, T, 2)
            feats = part.transpose(2, 3).reshape(b, bands, t, 2 * w)  # re/im interleaved per bin, as the reference
            out.append(fc(norm(feats)))  # (B, bands, T, N)
            first_bin += bands * w
        return torch.cat(out, dim=1).transpose(1, 2)  # (B, T, K, N)

    def _from_per_band(self, state_dict: dict, prefix: str, *_args) -> None:
        """Checkpoints with one GroupNorm and one Linear per band ('norms.k', 'fcs.k')."""
        for index, (first, bands, _) in enumerate(self.runs):
            _stack_bands(state_dict, prefix, first, bands, {
                f"run_norms.{index}.weight": ("norms.{k}.weight", False),
                f"run_norms.{index}.bias": ("norms.{k}.bias", False),
                f"run_fcs.{index}.weight": ("fcs.{k}.weight", True),
                f"run_fcs.{index}.bias": ("fcs.{k}.bias", False),
            })


class BandHeads(nn.Module):
    """Per band: GroupNorm(1, N) over (N x T) -> Linear(N -> H) -> Tanh -> Linear(H -> w * per_bin).

    Returns every band's outputs side by side, (B, T, sum(w) * per_bin), after `per_band` (applied to
    each band's own outputs, e.g. a GLU that halves them) when given.
    """

    def __init__(self, widths: tuple[int, ...], channels: int, hidden: int, per_bin: int,
                 per_band: Callable[[Tensor], Tensor] | None = None, per_frame: bool = False):
        super().__init__()
        self.runs, self.per_band = width_runs(tuple(widths)), per_band
        self.norm = RunNorm(len(widths), channels, per_frame)
        self.hidden = RunLinear(len(widths), channels, hidden)
        self.outs = nn.ModuleList(RunLinear(bands, hidden, w * per_bin) for _, bands, w in self.runs)
        self._register_load_state_dict_pre_hook(self._from_per_band)

    def forward(self, x: Tensor) -> Tensor:
        """Outputs (B, T, sum(w) * per_bin) of features (B, T, K, N)."""
        h = torch.tanh(self.hidden(self.norm(x.transpose(1, 2))))  # (B, K, T, H)
        out = []
        for (first, bands, _), fc in zip(self.runs, self.outs):
            part = fc(h[:, first : first + bands])  # (B, bands, T, w * per_bin)
            part = self.per_band(part) if self.per_band is not None else part
            out.append(part.transpose(1, 2).flatten(2))  # (B, T, bands * w * per_bin), band by band
        return torch.cat(out, dim=-1)

    def _from_per_band(self, state_dict: dict, prefix: str, *_args) -> None:
        """Checkpoints with one GroupNorm and one MLP per band ('norms.k', 'mlps.k.0', 'mlps.k.2')."""
        _stack_bands(state_dict, prefix, 0, len(self.norm.weight), {
            "norm.weight": ("norms.{k}.weight", False), "norm.bias": ("norms.{k}.bias", False),
            "hidden.weight": ("mlps.{k}.0.weight", True), "hidden.bias": ("mlps.{k}.0.bias", False),
        })
        for index, (first, bands, _) in enumerate(self.runs):
            _stack_bands(state_dict, prefix, first, bands, {
                f"outs.{index}.weight": ("mlps.{k}.2.weight", True),
                f"outs.{index}.bias": ("mlps.{k}.2.bias", False),
            })


def _stack_bands(state_dict: dict, prefix: str, first: int, bands: int, mapping: dict) -> None:
    """Replace per-band entries of an old checkpoint by their stacked run tensor (Linear weights transposed)."""
    for new, (old, transpose) in mapping.items():
        keys = [prefix + old.format(k=k) for k in range(first, first + bands)]
        if not all(key in state_dict for key in keys):
            continue
        tensors = [state_dict.pop(key) for key in keys]
        state_dict[prefix + new] = torch.stack([t.t() if transpose else t for t in tensors])
