"""Hu & Loizou composite measures (CSIG, CBAK, COVL) and segmental SNR, after Loizou's composite.m.

`composite(clean, processed, pesq_mos)` follows the MATLAB reference (book version) exactly, see
METRICS.md: eps added to both signals, 30 ms Hann-like frames every 7.5 ms, floor(L/hop - 4)
frames, MATLAB rounding in the 95% rule. `compat=True` reproduces the Python port most SE
repositories copy (CMGAN's tools/compute_metrics.py, called on float input), which differs in
three ways: eps only when the lengths differ, WSS frames divided by 32768, Python rounding.
"""

import math

import numpy as np

EPS = float(np.finfo(np.float64).eps)  # MATLAB's eps, 2.220446049250313e-16
ALPHA = 0.95  # share of the best frames kept by WSS and LLR
CENTRE_HZ = np.array([50.0, 120.0, 190.0, 260.0, 330.0, 400.0, 470.0, 540.0, 617.372, 703.378, 798.717,
                      904.128, 1020.38, 1148.30, 1288.72, 1442.54, 1610.70, 1794.16, 1993.93, 2211.08, 2446.71,
                      2701.97, 2978.04, 3276.17, 3597.63])
BANDWIDTH_HZ = np.array([70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 77.3724, 86.0056, 95.3398, 105.411, 116.256,
                         127.914, 140.423, 153.823, 168.154, 183.457, 199.776, 217.153, 235.631, 255.255,
                         276.072, 298.126, 321.465, 346.136])
K_MAX, K_LOCMAX = 20.0, 1.0  # Klatt's weights


def matlab_round(x: float) -> int:
    """Half away from zero, as MATLAB's round (Python's round is half to even)."""
    return math.floor(abs(x) + 0.5) * (1 if x >= 0 else -1)


def frames(signal: np.ndarray, rate: int) -> np.ndarray:
    """Windowed frames (n, win): 30 ms, hop win // 4, floor(L / hop - win / hop) of them."""
    win = round(30 * rate / 1000)
    hop = win // 4
    count = max(math.floor(len(signal) / hop - win / hop), 0)
    window = 0.5 * (1 - np.cos(2 * np.pi * np.arange(1, win + 1) / (win + 1)))
    index = np.arange(win)[None, :] + hop * np.arange(count)[:, None]
    return signal[index] * window


def critical_band_filters(rate: int, n_fft: int) -> np.ndarray:
    """The 25 Gaussian critical-band filters (25, n_fft // 2), values below -30 dB zeroed."""
    half = n_fft // 2
    bins = np.arange(half)
    centre = np.floor(CENTRE_HZ / (rate / 2) * half)[:, None]
    width = (BANDWIDTH_HZ / (rate / 2) * half)[:, None]
    norm = np.log(BANDWIDTH_HZ[0]) - np.log(BANDWIDTH_HZ)[:, None]
    filters = np.exp(-11 * ((bins - centre) / width) ** 2 + norm)
    return np.where(filters > math.exp(-30.0 / (2.0 * 2.303)), filters, 0.0)


def _nearest_peaks(energy: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """Per band (0..23) the energy of its 'nearest peak', with the reference's off-by-one kept."""
    bands = len(slope)
    peaks = np.empty(bands)
    for i in range(bands):
        n = i
        if slope[i] > 0:  # rising: walk right to the top, then take the band just below it
            while n < bands and slope[n] > 0:
                n += 1
            peaks[i] = energy[n - 1]
        else:  # falling: walk left to the top
            while n >= 0 and slope[n] <= 0:
                n -= 1
            peaks[i] = energy[n + 1]
    return peaks


def wss_frames(clean: np.ndarray, processed: np.ndarray, rate: int, scale: float = 1.0) -> np.ndarray:
    """Weighted spectral slope distance per frame (Klatt 1982)."""
    win = round(30 * rate / 1000)
    n_fft = 2 ** math.ceil(math.log2(2 * win))
    filters = critical_band_filters(rate, n_fft)
    energies = []
    for signal in (clean, processed):
        power = np.abs(np.fft.fft(frames(signal, rate) * scale, n_fft, axis=1)[:, : n_fft // 2]) ** 2
        energies.append(10 * np.log10(np.maximum(power @ filters.T, 1e-10)))  # (n, 25), absolute floor
    out = np.empty(len(energies[0]))
    for k, (ce, pe) in enumerate(zip(*energies)):
        cs, ps = np.diff(ce), np.diff(pe)
        w_clean = K_MAX / (K_MAX + ce.max() - ce[:-1]) * K_LOCMAX / (K_LOCMAX + _nearest_peaks(ce, cs) - ce[:-1])
        w_proc = K_MAX / (K_MAX + pe.max() - pe[:-1]) * K_LOCMAX / (K_LOCMAX + _nearest_peaks(pe, ps) - pe[:-1])
        weight = (w_clean + w_proc) / 2
        out[k] = np.sum(weight * (cs - ps) ** 2) / np.sum(weight)
    return out


def lpc(frames_: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Autocorrelation (n, order + 1) and LPC polynomials [1, -a] (n, order + 1) by Levinson-Durbin."""
    win = frames_.shape[1]
    r = np.stack([np.sum(frames_[:, : win - k] * frames_[:, k:], axis=1) for k in range(order + 1)], axis=1)
    a = np.ones((len(frames_), order))
    error = r[:, 0].copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(order):
            past = a[:, :i].copy()
            reflection = (r[:, i + 1] - np.sum(past * r[:, i:0:-1], axis=1)) / error
            a[:, i] = reflection
            a[:, :i] = past - reflection[:, None] * past[:, ::-1]
            error = (1 - reflection**2) * error
    return r, np.concatenate([np.ones((len(frames_), 1)), -a], axis=1)


def llr_frames(clean: np.ndarray, processed: np.ndarray, rate: int) -> np.ndarray:
    """Log-likelihood ratio per frame: ln(a_p R_c a_p' / a_c R_c a_c'), R_c the clean Toeplitz matrix."""
    order = 10 if rate < 10000 else 16
    r_clean, a_clean = lpc(frames(clean, rate), order)
    _, a_proc = lpc(frames(processed, rate), order)
    lags = np.abs(np.arange(order + 1)[:, None] - np.arange(order + 1)[None, :])
    toeplitz = r_clean[:, lags]  # (n, p + 1, p + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        numerator = np.einsum("ni,nij,nj->n", a_proc, toeplitz, a_proc)
        denominator = np.einsum("ni,nij,nj->n", a_clean, toeplitz, a_clean)
        return np.log(numerator / denominator)


def segmental_snr_frames(clean: np.ndarray, processed: np.ndarray, rate: int) -> np.ndarray:
    """Segmental SNR per frame in dB, clamped to [-10, 35]."""
    c, p = frames(clean, rate), frames(processed, rate)
    signal, noise = np.sum(c**2, axis=1), np.sum((c - p) ** 2, axis=1)
    return np.clip(10 * np.log10(signal / (noise + EPS) + EPS), -10.0, 35.0)


def _best_share_mean(values: np.ndarray, compat: bool) -> float:
    """Mean of the lowest 95% (the reference's robustness rule); NaN when there are no frames."""
    if len(values) == 0:
        return float("nan")
    keep = round(len(values) * ALPHA) if compat else matlab_round(len(values) * ALPHA)
    return float(np.mean(np.sort(values)[:keep]))


def _clamp(value: float) -> float:
    # Python's max(1, nan) is 1: the copied port pins CSIG/COVL to 1 when LLR is NaN; keep NaN here
    return min(5.0, max(1.0, value)) if value == value else value


def composite(clean: np.ndarray, processed: np.ndarray, pesq_mos: float, rate: int = 16000,
              compat: bool = False) -> dict[str, float]:
    """CSIG, CBAK, COVL (each in [1, 5]) with their parts: LLR, WSS and segmental SNR (dB)."""
    clean, processed = np.asarray(clean, np.float64), np.asarray(processed, np.float64)
    n = min(len(clean), len(processed))
    if not compat or len(clean) != len(processed):
        clean, processed = clean[:n] + EPS, processed[:n] + EPS
    wss = _best_share_mean(wss_frames(clean, processed, rate, 1 / 32768 if compat else 1.0), compat)
    llr = _best_share_mean(llr_frames(clean, processed, rate), compat)
    ssnr_frames = segmental_snr_frames(clean, processed, rate)
    ssnr = float(np.mean(ssnr_frames)) if len(ssnr_frames) else float("nan")
    csig = 3.093 - 1.029 * llr + 0.603 * pesq_mos - 0.009 * wss
    cbak = 1.634 + 0.478 * pesq_mos - 0.007 * wss + 0.063 * ssnr
    covl = 1.594 + 0.805 * pesq_mos - 0.512 * llr - 0.007 * wss
    if compat:  # the port's clamp: max(1, nan) = 1
        csig, cbak, covl = (min(5.0, max(1.0, v)) for v in (csig, cbak, covl))
    else:
        csig, cbak, covl = (_clamp(v) for v in (csig, cbak, covl))
    return {"csig": csig, "cbak": cbak, "covl": covl, "llr": llr, "wss": wss, "ssnr": ssnr}
