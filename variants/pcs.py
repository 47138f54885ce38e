"""Perceptual contrast stretching (Chao et al.; as used by SEMamba): a fixed post-processing, no parameters.

Procedure of the 400-point version (METRICS.md): STFT with n_fft 400, hop 100, Hamming window,
the signal padded by 200 samples on each side (centered STFT); log1p(|X|) times a fixed gain per
bin; expm1; the noisy phase kept; inverse STFT to the input length. No peak normalisation.
"""

import torch
from torch import Tensor

PCS_N_FFT = 400
PCS_HOP = 100
# (first bin, last bin, gamma) for the 201 bins of 40 Hz; gamma = 1 + 0.4 * I / max(I)
PCS_GAIN_SEGMENTS: tuple[tuple[int, int, float], ...] = (
    (0, 2, 1.0),
    (3, 4, 1.070175439),
    (5, 7, 1.182456140),
    (8, 9, 1.287719298),
    (10, 109, 1.4),
    (110, 129, 1.322807018),
    (130, 159, 1.238596491),
    (160, 189, 1.161403509),
    (190, 200, 1.077192982),
)


def pcs_gains(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """The 201 per-bin gains gamma_k of the 400-point PCS."""
    gains = torch.empty(PCS_N_FFT // 2 + 1, dtype=dtype, device=device)
    for first, last, gamma in PCS_GAIN_SEGMENTS:
        gains[first : last + 1] = gamma
    return gains


def perceptual_contrast_stretch(wav: Tensor) -> Tensor:
    """PCS of a waveform batch (B, samples) at 16 kHz; same shape out."""
    window = torch.hamming_window(PCS_N_FFT, device=wav.device, dtype=wav.dtype)
    spec = torch.stft(wav, PCS_N_FFT, PCS_HOP, window=window, center=True, pad_mode="constant", return_complex=True)
    gains = pcs_gains(wav.dtype, wav.device)[:, None]  # (F, 1)
    magnitude = torch.expm1(torch.log1p(spec.abs()) * gains)
    stretched = torch.polar(magnitude, spec.angle())
    return torch.istft(stretched, PCS_N_FFT, PCS_HOP, window=window, center=True, length=wav.shape[-1])
