"""Waveform <-> spectrum: the STFT pair and the enhancer base class every model of the zoo derives from."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from variants.config import ModelConfig
from variants.errors import MbsbenchError
from variants.pcs import perceptual_contrast_stretch


def stft(wav: Tensor, cfg: ModelConfig) -> Tensor:
    """Complex STFT (B, F, T) of a waveform batch (B, samples): Hann, centered, reflect pad."""
    if wav.dim() != 2:
        raise MbsbenchError(f"expected a waveform batch of shape (B, samples), got {tuple(wav.shape)}")
    if wav.shape[-1] < cfg.n_fft:
        raise MbsbenchError(f"input of {wav.shape[-1]} samples is shorter than one STFT frame ({cfg.n_fft})")
    window = torch.hann_window(cfg.n_fft, device=wav.device, dtype=wav.dtype)
    return torch.stft(wav, cfg.n_fft, cfg.hop, window=window, center=True, pad_mode="reflect", return_complex=True)


def istft(spec: Tensor, cfg: ModelConfig, length: int) -> Tensor:
    """Inverse of `stft`, trimmed or padded to `length` samples: torch.istft's overlap-add, without its check.

    torch.istft verifies the window envelope on the data (aten.equal), which stops a fake-tensor trace; here
    the envelope is known to be positive (ModelConfig requires hop < n_fft with the periodic Hann window).
    The overlap-add is aten's unfold_backward, as in torch.istft (the adjoint of Tensor.unfold).
    """
    window = torch.hann_window(cfg.n_fft, device=spec.device, dtype=spec.real.dtype)
    batch, n_frames = spec.shape[0], spec.shape[-1]
    total = cfg.n_fft + cfg.hop * (n_frames - 1)
    frames = torch.fft.irfft(spec, n=cfg.n_fft, dim=1).transpose(1, 2) * window  # (B, T, n_fft)
    signal = torch.ops.aten.unfold_backward(frames, [batch, total], 1, cfg.n_fft, cfg.hop)  # (B, total)
    envelope = torch.ops.aten.unfold_backward(window.square().expand(n_frames, -1), [total], 0, cfg.n_fft, cfg.hop)
    start = cfg.n_fft // 2
    stop = min(start + length, total)  # centered: the output starts half a window in (torch.istft's trim)
    out = signal[:, start:stop] / envelope[start:stop]
    return F.pad(out, (0, length - out.shape[-1]))


class SpectralEnhancer(nn.Module):
    """Waveform (B, samples) -> STFT -> enhance_spec -> inverse STFT, same length; PCS at inference if set."""

    cfg: ModelConfig  # subclasses also define enhance_spec(spec (B, F, T)) -> spec

    def forward(self, wav: Tensor, pcs: bool | None = None) -> Tensor:
        """Enhanced waveform; PCS as the config says (inference only), or as `pcs` says when given."""
        out = istft(self.enhance_spec(stft(wav, self.cfg)), self.cfg, wav.shape[-1])
        if (self.cfg.pcs if pcs is None else pcs) and not self.training:
            out = perceptual_contrast_stretch(out)
        return out
