"""Building blocks of MBS-Net and BSRNN: band split, Mamba blocks, heads and decoders (the STFT pair: spectral.py).

Feature maps are channels-last, (B, T, K, N): frames, bands, channels.
"""

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from variants.bands import BandHeads, RunLinear
from variants.config import ModelConfig
from variants.scan import choose_scan, scan_entry


def group_norm_1(x: Tensor, norm: nn.GroupNorm) -> Tensor:
    """GroupNorm(1, C) of a channels-last tensor: statistics over every non-batch dim."""
    return F.layer_norm(x, x.shape[1:], eps=norm.eps) * norm.weight + norm.bias


class SelectiveSSM(nn.Module):
    """Causal depthwise conv, input-dependent delta/B/C, and the selective scan (names as the reference)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, n, rank = cfg.d_inner, cfg.d_state, cfg.dt_rank_resolved
        self.cfg = cfg
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d, 1))
        self.D = nn.Parameter(torch.ones(d))
        self.x_proj_dt = nn.Linear(d, rank, bias=False)
        self.dt_proj = nn.Linear(rank, d, bias=True)
        self.B_proj = nn.Linear(d, n, bias=False)
        self.C_proj = nn.Linear(d, n, bias=False)
        self.conv1d = nn.Conv1d(d, d, cfg.d_conv, groups=d, padding=cfg.d_conv - 1, bias=True)
        self.reset_dt_bias()

    def reset_dt_bias(self) -> None:
        """Delta bias = inverse softplus of a log-uniform draw in [1e-3, 0.1] (Mamba's init)."""
        if self.cfg.dt_bias_init == "zeroed":  # seed bug: the model-level re-init zeroes it
            nn.init.zeros_(self.dt_proj.bias)
            return
        with torch.no_grad():
            low, high = math.log(1e-3), math.log(0.1)
            dt = torch.exp(torch.rand_like(self.dt_proj.bias) * (high - low) + low)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: Tensor) -> Tensor:
        entry = scan_entry(resolve_scan(self.cfg, x.device, x.dtype))
        time_major = entry.time_major is not None
        length = x.shape[1]
        xc = F.silu(self.conv1d(x.transpose(1, 2))[..., :length])  # (b, d, l), causal
        # time-major scans get one contiguous (l, b, d) copy instead of a copy per projection and scan input
        xc = xc.permute(2, 0, 1).contiguous() if time_major else xc.transpose(1, 2)
        delta = F.softplus(self.dt_proj(self.x_proj_dt(xc)))
        A = -torch.exp(self.A_log)  # (d, n)
        D = self.D
        if self.cfg.skip_d == "const_d_inner":  # seed bug: D shadowed by the integer d_inner
            D = torch.full_like(self.D, float(self.cfg.d_inner)).detach()
        B, C = self.B_proj(xc), self.C_proj(xc)
        with torch.autocast(x.device.type, enabled=False):  # the recurrence accumulates in float32, as Mamba's
            inputs = [t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in (xc, delta, A, B, C, D)]
            y = (entry.time_major or entry.fn)(*inputs, chunk_size=self.cfg.chunk_size)
        return y.transpose(0, 1) if time_major else y  # (b, l, d)


def resolve_scan(cfg: ModelConfig, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The scan a config runs on a device for a model of this dtype: 'seed' under the clamps bug, else cfg.scan
    with 'auto' resolved (float64 models never get a float32 kernel)."""
    return "seed" if cfg.scan_clamps == "seed" else choose_scan(cfg.scan, device, dtype)


class MambaBlock(nn.Module):
    """Pre-norm residual Mamba block on (b, l, d_model)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.checkpoint = cfg.checkpoint_blocks
        self.norm = nn.LayerNorm(cfg.feature_dim)
        self.in_proj = nn.Linear(cfg.feature_dim, 2 * cfg.d_inner, bias=False)
        self.ssm = SelectiveSSM(cfg)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.feature_dim, bias=False)

    def _mix(self, x: Tensor) -> Tensor:
        xs, z = self.in_proj(self.norm(x)).chunk(2, dim=-1)  # (b, l, d_inner) each
        return self.out_proj(self.ssm(xs) * F.silu(z))

    def forward(self, x: Tensor) -> Tensor:
        if self.checkpoint and self.training and torch.is_grad_enabled():
            return x + checkpoint(self._mix, x, use_reentrant=False)
        return x + self._mix(x)


class BiMambaBlock(nn.Module):
    """Forward and time-flipped Mamba blocks, concat -> Linear(2N -> N) -> LayerNorm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fwd = MambaBlock(cfg)
        self.bwd = MambaBlock(cfg)
        self.combine = nn.Linear(2 * cfg.feature_dim, cfg.feature_dim)
        self.norm = nn.LayerNorm(cfg.feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        backward = self.bwd(x.flip(1)).flip(1)
        return self.norm(self.combine(torch.cat([self.fwd(x), backward], dim=-1)))


class BandMLP(nn.Module):
    """Pointwise Linear(N -> N) -> LayerNorm -> GELU per (frame, band)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n = cfg.feature_dim
        self.net = nn.Sequential(nn.Linear(n, n), nn.LayerNorm(n), nn.GELU())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Encoder(nn.Module):
    """Mamba blocks over time per band, a mixer across bands, LayerNorm(temporal + band)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        block = BiMambaBlock if cfg.bidirectional_time else MambaBlock
        self.time_blocks = nn.ModuleList(block(cfg) for _ in range(cfg.temporal_layers))
        self.band_mixer = BiMambaBlock(cfg) if cfg.band_mixer == "bimamba" else BandMLP(cfg)
        self.norm = nn.LayerNorm(cfg.feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, k, n = x.shape
        seq = x.transpose(1, 2).reshape(b * k, t, n)  # (B*K, T, N): one sequence per band
        for block in self.time_blocks:
            seq = block(seq)
        temporal = seq.reshape(b, k, t, n).transpose(1, 2)  # (B, T, K, N)
        across = self.band_mixer(temporal.reshape(b * t, k, n)).reshape(b, t, k, n)  # bands as a sequence
        return self.norm(temporal + across)


SQUASH = {"magnitude": torch.sigmoid, "phase": lambda x: torch.tanh(x) * math.pi}


class OutputHead(nn.Module):
    """The output net of one stream: 'mlp2' Linear-Tanh-Linear or one 'linear', then its squash."""

    def __init__(self, kind: str, channels: int, stream: str):
        super().__init__()
        layers = {
            "mlp2": lambda: [nn.Linear(channels, 2 * channels), nn.Tanh(), nn.Linear(2 * channels, channels)],
            "linear": lambda: [nn.Linear(channels, channels)],
        }[kind]()
        self.net = nn.Sequential(*layers)
        self.stream = stream

    def forward(self, x: Tensor) -> Tensor:
        return SQUASH[self.stream](self.net(x))


def wrap_phase(phase: Tensor) -> Tensor:
    """Wrap angles to [-pi, pi)."""
    return torch.remainder(phase + math.pi, 2 * math.pi) - math.pi


class DualMagPhaseDecoder(nn.Module):
    """Magnitude path -> sigmoid mask; phase path -> tanh * pi offset; |X| m exp(i wrap(angle X + o))."""

    paths = 2

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.decoder_hidden * cfg.feature_dim
        per_frame = cfg.band_norm == "frame"
        self.mag = BandHeads(cfg.band_widths, cfg.feature_dim, hidden, 1, per_frame=per_frame)
        self.phase = BandHeads(cfg.band_widths, cfg.feature_dim, hidden, 1, per_frame=per_frame)

    def forward(self, streams: list[Tensor], spec: Tensor) -> Tensor:
        mask = torch.sigmoid(self.mag(streams[0])).transpose(1, 2)  # (B, F, T)
        offset = torch.tanh(self.phase(streams[1])).transpose(1, 2) * math.pi
        return torch.polar(spec.abs() * mask, wrap_phase(spec.angle() + offset))


class MaskDecoder3Tap(nn.Module):
    """BSRNN's decoder: per band GLU -> complex mask of 3 taps per bin, applied across time (frames t-1, t, t+1;
    mask_taps='past': t-2, t-1, t, no lookahead)."""

    paths = 1

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.decoder_hidden * cfg.feature_dim
        self.heads = BandHeads(cfg.band_widths, cfg.feature_dim, hidden, 12, per_band=partial(F.glu, dim=-1),
                               per_frame=cfg.band_norm == "frame")
        self.lookahead = 1 if cfg.mask_taps == "centered" else 0  # frames after t the taps read

    def forward(self, streams: list[Tensor], spec: Tensor) -> Tensor:
        m = self.heads(streams[0])  # (B, T, 6F): per band, GLU of its 12w outputs
        m = m.unflatten(-1, (-1, 3, 2))  # (B, T, F, 3, 2)
        m = torch.view_as_complex(m.to(spec.real.dtype).contiguous()).transpose(1, 2)  # (B, F, T, 3)
        after = self.lookahead  # zero frames: 1 before and 1 after t (centered), or 2 before (past)
        padded = torch.view_as_complex(F.pad(torch.view_as_real(spec), (0, 0, 2 - after, after)))  # (B, F, T + 2)
        t = spec.shape[-1]
        return m[..., 0] * padded[..., :t] + m[..., 1] * padded[..., 1 : t + 1] + m[..., 2] * padded[..., 2:]


DECODERS = {"dual_magphase": DualMagPhaseDecoder, "mask3tap": MaskDecoder3Tap}


def init_like_reference(model: nn.Module) -> None:
    """The reference's model-level init: Xavier-uniform Linear weights, zero biases.

    The delta bias is then restored to Mamba's init unless the config reproduces the seed
    bug that zeroed it (dt_bias_init='zeroed'). LSTMs: Xavier input, orthogonal recurrent weights.
    """
    for module in model.modules():
        if isinstance(module, RunLinear):  # one Linear per band, batched: the same init band by band
            module.reset_parameters()
        elif isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LSTM):
            for name, param in module.named_parameters():
                init = {"weight_ih": nn.init.xavier_uniform_, "weight_hh": nn.init.orthogonal_}
                init.get(name.rsplit("_l", 1)[0], nn.init.zeros_)(param)
    for module in model.modules():
        if isinstance(module, SelectiveSSM):
            module.reset_dt_bias()
