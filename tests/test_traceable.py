"""The models trace: the inverse STFT needs no data-dependent check, and the Triton scan is a torch operator that
FakeTensorMode, torch.compile (fullgraph) and torch.export see (its kernels under Triton's interpreter here)."""

import warnings

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from variants.errors import MbsbenchError
from variants.registry import build_config, build_model, list_variants
from variants.scan_triton import TRITON, interpreted
from variants.spectral import istft, stft

# one time scan, bands mixed by the MLP, the 3-tap decoder: the interpreter runs it in about a second
TINY = {"feature_dim": 16, "temporal_layers": 1}
WAV_SAMPLES = 600


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-14)])
@pytest.mark.parametrize("samples", [512, 600, 16000, 32001])
def test_istft_equals_torch_istft(samples: int, dtype: torch.dtype, tol: float) -> None:
    cfg = build_config("original")
    wav = torch.randn(3, samples, dtype=dtype)
    spec = stft(wav, cfg)
    window = torch.hann_window(cfg.n_fft, dtype=dtype)
    for length in (samples, samples - 100, samples + 300):  # trimmed, and padded past the last frame
        ours = istft(spec, cfg, length)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns (once) that it pads past the last frame
            theirs = torch.istft(spec, cfg.n_fft, cfg.hop, window=window, center=True, length=length)
        assert ours.shape == theirs.shape and ours.dtype == dtype
        assert (ours - theirs).abs().max() <= tol * theirs.abs().max()


def test_frames_that_do_not_overlap_are_refused() -> None:
    with pytest.raises(MbsbenchError, match="hop=512 must be smaller than n_fft=512"):
        build_config("original", hop=512)


@pytest.mark.parametrize("name", [n for n in list_variants() if "+" not in n and "-" not in n])
def test_every_base_variant_steps_on_fake_tensors(name: str) -> None:
    """Forward and backward of each base variant on fake tensors (its own scan; triton's fake implementation
    for scan=triton): nothing is computed, every gradient gets its shape. torch.istft stopped every one."""
    cfg = build_config(name, feature_dim=16)
    with FakeTensorMode():
        torch.manual_seed(0)
        model = build_model(cfg)
        out = model(torch.randn(2, 4000))
        out.abs().mean().backward()
        assert isinstance(out, FakeTensor) and out.shape == (2, 4000)
        shadowed = cfg.skip_d == "const_d_inner"  # the seed bug: D never enters the output, so gets no gradient
        for param_name, p in model.named_parameters():
            if not (shadowed and param_name.endswith(".D")):
                assert p.grad is not None and p.grad.shape == p.shape, param_name


@pytest.fixture
def interpreter() -> None:
    if not TRITON:
        pytest.skip("triton is not installed")
    if not interpreted():
        pytest.skip("the kernels run compiled on this machine: the cuda tests check them")


def tiny_triton_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(build_config("optimized", scan="triton", **TINY))


def test_a_triton_model_steps_on_fake_tensors(interpreter) -> None:
    with FakeTensorMode():
        model = tiny_triton_model()
        out = model(torch.randn(2, WAV_SAMPLES))
        out.abs().mean().backward()
        ssm = next(m for m in model.modules() if type(m).__name__ == "SelectiveSSM")
        assert isinstance(out, FakeTensor) and ssm.A_log.grad.shape == ssm.A_log.shape


def test_a_triton_model_compiles_whole_with_the_same_result(interpreter) -> None:
    """torch.compile(fullgraph=True): one graph (no break) for forward and, through AOTAutograd, backward."""
    model = tiny_triton_model()
    wav = torch.randn(1, WAV_SAMPLES) * 0.1
    eager = model(wav)
    eager.abs().mean().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(wav)
    compiled.abs().mean().backward()
    assert torch.allclose(compiled, eager, rtol=0, atol=1e-6)
    assert all(torch.allclose(p.grad, g, rtol=1e-5, atol=1e-7) for p, g in zip(model.parameters(), expected))


def test_the_triton_scan_compiles_with_inductor(interpreter) -> None:
    """Inductor calls the operator as an external kernel: same output and gradients as eager."""
    from variants.scan_triton import selective_scan_triton

    inputs = [torch.randn(2, 9, 8), torch.rand(2, 9, 8), -torch.rand(8, 4) - 0.5, torch.randn(2, 9, 4),
              torch.randn(2, 9, 4), torch.ones(8)]
    inputs = [t.requires_grad_() for t in inputs]

    def step(*xs):
        return torch.tanh(selective_scan_triton(*xs, chunk_size=4)).sum()

    expected = torch.autograd.grad(step(*inputs), inputs)
    torch._dynamo.reset()
    with torch._inductor.config.patch(fx_graph_cache=False):  # compiled here, never a graph cached on this disk
        got = torch.autograd.grad(torch.compile(step, fullgraph=True)(*inputs), inputs)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(got, expected))


def test_a_triton_model_exports_with_the_scan_as_one_operator(interpreter) -> None:
    model = tiny_triton_model().eval()
    wav = torch.randn(1, WAV_SAMPLES) * 0.1
    exported = torch.export.export(model, (wav,))
    targets = [str(node.target) for module in exported.graph_module.modules() if hasattr(module, "graph")
               for node in module.graph.nodes]
    assert "mbsbench.selective_scan_fwd.default" in targets
    assert torch.equal(exported.module()(wav), model(wav))
