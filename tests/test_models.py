"""Every variant maps (B, T) to (B, T), trains, and the reference-bug flags do what MODELS.md says."""

import pytest
import torch
import torch.nn.functional as F

from variants.config import ModelConfig
from variants.errors import MbsbenchError
from variants.layers import SelectiveSSM, wrap_phase
from variants.registry import BASES, all_names, build
from variants.scan import selective_scan_chunked, selective_scan_seed
from variants.scan_cpu import compiler

# D is unused by design under the skip_d seed bug: it must get no gradient there
UNUSED_UNDER_SKIP_BUG = ".ssm.D"


@pytest.mark.parametrize("name", [n for n in all_names() if n not in ("original", "original_seed")] + ["original"])
def test_forward_backward(name: str, half_second: torch.Tensor) -> None:
    wav = half_second[:, :4000]  # 33 frames: two chunks of the chunked scans (32 frames), half the time of 0.5 s
    model = build(name)
    out = model(wav)
    assert out.shape == wav.shape
    assert torch.isfinite(out).all()
    (out - wav).abs().mean().backward()
    skip_bug = model.cfg.skip_d == "const_d_inner"
    for pname, param in model.named_parameters():
        if skip_bug and pname.endswith(UNUSED_UNDER_SKIP_BUG):
            assert param.grad is None, pname
        else:
            assert param.grad is not None and torch.isfinite(param.grad).all(), pname


@pytest.mark.parametrize("samples", [512, 513, 1000, 16000])
def test_any_length_and_batch(samples: int) -> None:
    model = build("optimized").eval()
    wav = torch.randn(3, samples)
    with torch.no_grad():
        out = model(wav)
    assert out.shape == (3, samples)


def test_batch_items_are_independent() -> None:
    model = build("bsrnn").eval()
    wav = torch.randn(2, 4000)
    with torch.no_grad():
        both = model(wav)
        first = model(wav[:1])
    torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-5)


def test_too_short_input_is_an_error() -> None:
    with pytest.raises(MbsbenchError, match="shorter than one STFT frame"):
        build("optimized")(torch.randn(1, 100))


def test_registered_bases_deterministic_init() -> None:
    torch.manual_seed(3)
    a = build("optimized").state_dict()
    torch.manual_seed(3)
    b = build("optimized").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert set(BASES) >= {"original", "optimized", "bsrnn"}


def ssm_of(name: str, **overrides) -> SelectiveSSM:
    model = build(name, **overrides)
    return next(m for m in model.modules() if isinstance(m, SelectiveSSM))


def test_skip_d_bug_shadows_d() -> None:
    x = torch.randn(2, 20, 128)
    buggy = ssm_of("optimized", skip_d="const_d_inner")
    before = buggy(x)
    with torch.no_grad():
        buggy.D.zero_()
    torch.testing.assert_close(buggy(x), before)  # D has no effect: the integer d_inner is used
    fixed = ssm_of("optimized")
    before = fixed(x)
    with torch.no_grad():
        fixed.D.zero_()
    assert not torch.allclose(fixed(x), before)


def test_dt_bias_zeroed_bug() -> None:
    buggy = F.softplus(ssm_of("original_seed").dt_proj.bias)
    torch.testing.assert_close(buggy, torch.full_like(buggy, 0.6931472))  # softplus(0) = ln 2
    fixed = F.softplus(ssm_of("original").dt_proj.bias)
    assert fixed.min() >= 1e-3 * 0.999 and fixed.max() <= 0.1 * 1.001


def test_scan_clamps_bug_saturates_and_kills_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    u = (torch.randn(1, 1, 64, generator=g) * 60).requires_grad_()  # one step: y_0 depends on u_0 only
    delta, A = torch.full((1, 1, 64), 0.5), -torch.rand(64, 4, generator=g)
    B, C, D = torch.randn(1, 1, 4, generator=g) * 0.01, torch.randn(1, 1, 4, generator=g), torch.ones(64)
    assert selective_scan_chunked(u, delta, A, B, C, D).abs().max() > 50
    clamped = selective_scan_seed(u, delta, A, B, C, D)
    assert clamped.abs().max() == 50
    clamped.sum().backward()
    saturated = clamped.detach().abs() == 50
    assert saturated.any() and (~saturated).any()
    assert (u.grad[saturated] == 0).all()  # zero gradient outside the clamp range
    assert (u.grad[~saturated] != 0).all()


def ssm_outputs(name: str) -> torch.Tensor:
    """Every SSM output of a model at init on 1 s of low-level noise, flattened."""
    outputs: list[torch.Tensor] = []
    model = build(name).eval()
    for module in model.modules():
        if isinstance(module, SelectiveSSM):
            module.register_forward_hook(lambda m, i, o: outputs.append(o.detach().flatten()))
    with torch.no_grad():
        model(torch.randn(1, 16000) * 0.1)
    return torch.cat(outputs)


def test_seed_model_sits_on_the_clamp() -> None:
    """MODELS.md: with the clamps (and the D bug) 12-15% of SSM outputs sit on +-50 at init."""
    fraction = (ssm_outputs("optimized_seed").abs() >= 50).float().mean().item()
    assert 0.08 < fraction < 0.2
    assert (ssm_outputs("optimized").abs() >= 50).sum() == 0


def test_checkpoint_blocks_same_gradients(half_second: torch.Tensor) -> None:
    torch.manual_seed(1)
    plain = build("optimized")
    torch.manual_seed(1)
    ckpt = build("optimized", checkpoint_blocks=True)
    for model in (plain, ckpt):
        model(half_second).square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_pcs_flag_changes_inference_only(half_second: torch.Tensor) -> None:
    torch.manual_seed(2)
    plain = build("optimized").eval()
    torch.manual_seed(2)
    with_pcs = build("optimized", pcs=True).eval()
    with torch.no_grad():
        assert not torch.allclose(plain(half_second), with_pcs(half_second))
    with_pcs.train()
    plain.train()
    torch.testing.assert_close(plain(half_second), with_pcs(half_second))


def test_wrap_phase() -> None:
    angles = torch.tensor([0.0, 3.5, -3.5, 7.0])
    wrapped = wrap_phase(angles)
    assert (wrapped >= -torch.pi).all() and (wrapped < torch.pi).all()
    torch.testing.assert_close(torch.polar(torch.ones(4), wrapped), torch.polar(torch.ones(4), angles))


def test_config_fields_cover_design() -> None:
    fields = ModelConfig().to_dict()
    for knob in ("d_state", "d_conv", "expand", "dt_rank", "bidirectional_time", "encoder", "band_mixer",
                 "output_net", "decoder", "decoder_hidden", "scan", "chunk_size", "skip_d", "dt_bias_init",
                 "scan_clamps", "pcs", "checkpoint_blocks"):
        assert knob in fields


@pytest.mark.parametrize("name", ["original", "optimized"])
def test_fast_scan_model_matches_naive_scan_in_float64(name: str) -> None:
    """The whole model with chunked_ckpt and with the C kernel (time-major paths) gives the naive scan's output and
    gradients."""
    outputs, grads = [], []
    wav = torch.randn(2, 4000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.1
    for scan in ("naive", "chunked_ckpt", *(["cpu_fused"] if compiler() else [])):
        torch.manual_seed(0)
        model = build(name, feature_dim=32, scan=scan, chunk_size=7).double()
        out = model(wav)
        (out - wav).abs().mean().backward()
        outputs.append(out.detach())
        grads.append({k: p.grad for k, p in model.named_parameters()})
    for fast in range(1, len(outputs)):
        torch.testing.assert_close(outputs[fast], outputs[0], rtol=1e-9, atol=1e-12)
        for key, grad in grads[0].items():
            torch.testing.assert_close(grads[fast][key], grad, rtol=1e-8, atol=1e-12, msg=key)
