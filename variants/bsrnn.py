"""The BSRNN baseline (Yu et al. 2023) as the reference repository builds it."""

from torch import Tensor, nn

from variants.bands import BandSplit
from variants.config import ModelConfig
from variants.layers import MaskDecoder3Tap, group_norm_1, init_like_reference
from variants.spectral import SpectralEnhancer


class LSTMLayer(nn.Module):
    """GroupNorm(1, N) over (N, T, K) -> LSTM along one axis -> Linear -> residual."""

    def __init__(self, channels: int, bidirectional: bool):
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.lstm = nn.LSTM(channels, 2 * channels, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear((4 if bidirectional else 2) * channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """Run along dim 1 of x (B, S, R, N): each of the R rows is one sequence of length S."""
        b, s, r, n = x.shape
        seq = group_norm_1(x, self.norm).transpose(1, 2).reshape(b * r, s, n)  # (B*R, S, N)
        out = self.fc(self.lstm(seq)[0]).reshape(b, r, s, n).transpose(1, 2)
        return x + out


class BSRNN(SpectralEnhancer):
    """Band split -> unidirectional LSTMs over time -> BiLSTMs over bands -> 3-tap mask decoder."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.band_split = BandSplit(cfg.band_widths, cfg.feature_dim, cfg.band_norm == "frame")
        self.time_layers = nn.ModuleList(LSTMLayer(cfg.feature_dim, False) for _ in range(cfg.temporal_layers))
        self.band_layers = nn.ModuleList(LSTMLayer(cfg.feature_dim, True) for _ in range(cfg.band_layers))
        self.decoder = MaskDecoder3Tap(cfg)
        init_like_reference(self)

    def enhance_spec(self, spec: Tensor) -> Tensor:
        """Enhanced complex STFT (B, F, T) of a noisy one."""
        x = self.band_split(spec)  # (B, T, K, N)
        for layer in self.time_layers:
            x = layer(x)
        x = x.transpose(1, 2)  # (B, K, T, N): bands as the sequence axis
        for layer in self.band_layers:
            x = layer(x)
        return self.decoder([x.transpose(1, 2)], spec)

