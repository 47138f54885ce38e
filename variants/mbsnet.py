"""MBS-Net assembled from layers; original, optimized and every variant are configs of it."""

from torch import Tensor, nn

from variants.bands import BandSplit
from variants.config import ModelConfig
from variants.layers import DECODERS, Encoder, OutputHead, init_like_reference
from variants.spectral import SpectralEnhancer

STREAMS = ("magnitude", "phase")


class MBSNet(SpectralEnhancer):
    """Noisy waveform (B, T) -> enhanced waveform (B, T) at 16 kHz.

    Encoders ("two_branch": 2, "shared": 1) feed one stream per decoder path or per branch,
    whichever is more; each stream has its own output head. Combinations the reference never
    built use rules that add no parameters: a shared encoder feeds the same features to both
    streams, and two streams feeding the single-path mask decoder are averaged.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.band_split = BandSplit(cfg.band_widths, cfg.feature_dim, cfg.band_norm == "frame")
        n_encoders = 2 if cfg.encoder == "two_branch" else 1
        self.encoders = nn.ModuleList(Encoder(cfg) for _ in range(n_encoders))
        decoder = DECODERS[cfg.decoder]
        n_streams = max(n_encoders, decoder.paths)
        self.heads = nn.ModuleList(
            OutputHead(cfg.output_net, cfg.feature_dim, STREAMS[i]) for i in range(n_streams)
        ) if cfg.output_net != "none" else None
        self.n_streams = n_streams
        self.decoder = decoder(cfg)
        init_like_reference(self)

    def enhance_spec(self, spec: Tensor) -> Tensor:
        """Enhanced complex STFT (B, F, T) of a noisy one."""
        z = self.band_split(spec)  # (B, T, K, N)
        features = [encoder(z) for encoder in self.encoders]
        streams = [features[min(i, len(features) - 1)] for i in range(self.n_streams)]
        if self.heads is not None:
            streams = [head(x) for head, x in zip(self.heads, streams)]
        if self.decoder.paths == 1 and len(streams) == 2:
            streams = [(streams[0] + streams[1]) / 2]
        return self.decoder(streams, spec)

