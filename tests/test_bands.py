"""Per-band layers batched by runs of equal width: the same function as one GroupNorm and Linear per band."""

import pytest
import torch
import torch.nn.functional as F

from variants.bands import BandHeads, BandSplit, width_runs
from variants.config import BAND_WIDTHS
from variants.registry import build

WIDTHS = (2, 3, 3, 8, 3, 17)  # a run of one, of two, a width that comes back later


def test_width_runs() -> None:
    assert width_runs(BAND_WIDTHS) == [(0, 1, 2), (1, 10, 3), (11, 12, 8), (23, 7, 16), (30, 1, 17)]
    assert width_runs(WIDTHS) == [(0, 1, 2), (1, 2, 3), (3, 1, 8), (4, 1, 3), (5, 1, 17)]


def band_params(runs_weight: list[torch.Tensor], runs: list[tuple[int, int, int]]) -> list[torch.Tensor]:
    """Run tensors (bands, ...) back to one tensor per band."""
    return [t[i] for (_, bands, _), t in zip(runs, runs_weight) for i in range(bands)]


def randomize(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()


def test_band_split_is_one_groupnorm_and_linear_per_band() -> None:
    split = BandSplit(WIDTHS, 5).double()
    randomize(split)
    spec = torch.randn(2, sum(WIDTHS), 9, dtype=torch.complex128)
    out = split(spec)  # (B, T, K, N)
    norms_w = band_params([n.weight for n in split.run_norms], split.runs)
    norms_b = band_params([n.bias for n in split.run_norms], split.runs)
    fcs_w = band_params([f.weight for f in split.run_fcs], split.runs)
    fcs_b = band_params([f.bias for f in split.run_fcs], split.runs)
    x = torch.view_as_real(spec)  # (B, F, T, 2)
    start = 0
    for k, w in enumerate(WIDTHS):
        band = x[:, start : start + w].permute(0, 1, 3, 2).reshape(2, 2 * w, 9)  # (B, 2w, T): re, im of each bin
        start += w
        normed = F.group_norm(band, 1, norms_w[k], norms_b[k], eps=1e-5)  # GroupNorm(1, 2w) over (2w x T)
        expected = F.linear(normed.transpose(1, 2), fcs_w[k].t(), fcs_b[k])  # (B, T, N)
        torch.testing.assert_close(out[:, :, k], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_bin,glu", [(1, False), (12, True)])
def test_band_heads_are_one_mlp_per_band(per_bin: int, glu: bool) -> None:
    heads = BandHeads(WIDTHS, 4, 6, per_bin, per_band=(lambda t: F.glu(t, dim=-1)) if glu else None).double()
    randomize(heads)
    x = torch.randn(2, 7, len(WIDTHS), 4, dtype=torch.float64)
    out = heads(x)
    outs_w = band_params([o.weight for o in heads.outs], heads.runs)
    outs_b = band_params([o.bias for o in heads.outs], heads.runs)
    expected = []
    for k in range(len(WIDTHS)):
        band = F.group_norm(x[:, :, k].transpose(1, 2), 1, heads.norm.weight[k], heads.norm.bias[k], eps=1e-5)
        hidden = torch.tanh(F.linear(band.transpose(1, 2), heads.hidden.weight[k].t(), heads.hidden.bias[k]))
        band_out = F.linear(hidden, outs_w[k].t(), outs_b[k])
        expected.append(F.glu(band_out, dim=-1) if glu else band_out)
    torch.testing.assert_close(out, torch.cat(expected, dim=-1), rtol=1e-12, atol=1e-12)


def per_band_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state in the layout of checkpoints written before the batching (one module per band)."""
    state = {}
    for name, tensor in model.state_dict().items():
        state[name] = tensor
    for prefix, module in model.named_modules():
        prefix = f"{prefix}." if prefix else ""
        if isinstance(module, BandSplit):
            for index, (first, bands, _) in enumerate(module.runs):
                for i in range(bands):
                    for new, old, flip in (("run_norms.{r}.weight", "norms.{k}.weight", False),
                                           ("run_norms.{r}.bias", "norms.{k}.bias", False),
                                           ("run_fcs.{r}.weight", "fcs.{k}.weight", True),
                                           ("run_fcs.{r}.bias", "fcs.{k}.bias", False)):
                        value = state[prefix + new.format(r=index)][i]
                        state[prefix + old.format(k=first + i)] = value.t() if flip else value
                for new in ("run_norms.{r}.weight", "run_norms.{r}.bias", "run_fcs.{r}.weight", "run_fcs.{r}.bias"):
                    state.pop(prefix + new.format(r=index))
        if isinstance(module, BandHeads):
            for k in range(len(module.norm.weight)):
                state[f"{prefix}norms.{k}.weight"] = state[f"{prefix}norm.weight"][k]
                state[f"{prefix}norms.{k}.bias"] = state[f"{prefix}norm.bias"][k]
                state[f"{prefix}mlps.{k}.0.weight"] = state[f"{prefix}hidden.weight"][k].t()
                state[f"{prefix}mlps.{k}.0.bias"] = state[f"{prefix}hidden.bias"][k]
            for index, (first, bands, _) in enumerate(module.runs):
                for i in range(bands):
                    state[f"{prefix}mlps.{first + i}.2.weight"] = state[f"{prefix}outs.{index}.weight"][i].t()
                    state[f"{prefix}mlps.{first + i}.2.bias"] = state[f"{prefix}outs.{index}.bias"][i]
                state.pop(f"{prefix}outs.{index}.weight")
                state.pop(f"{prefix}outs.{index}.bias")
            for key in ("norm.weight", "norm.bias", "hidden.weight", "hidden.bias"):
                state.pop(prefix + key)
    return state


@pytest.mark.parametrize("name", ["optimized", "bsrnn"])
def test_per_band_checkpoints_still_load(name: str) -> None:
    torch.manual_seed(0)
    trained = build(name, feature_dim=16).eval()
    old_layout = per_band_state(trained)
    assert any(".mlps.3.2.weight" in key for key in old_layout) and not any(".outs." in k for k in old_layout)
    torch.manual_seed(1)
    fresh = build(name, feature_dim=16).eval()
    fresh.load_state_dict(old_layout)  # strict: every key converted, none left over
    wav = torch.randn(1, 4000)
    with torch.no_grad():
        torch.testing.assert_close(fresh(wav), trained(wav))
