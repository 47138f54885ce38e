"""DNSMOS (Reddy et al., ICASSP 2021/2022): non-intrusive MOS from the ONNX models the `speechmos` package ships.

P.835 (SIG, BAK, OVRL, each through the published polynomial calibration) and P.808 MOS, per 9.01 s window
with a 1 s hop, averaged over the windows; a clip shorter than a window is repeated until it fills one. The
P.808 model reads a 120-band mel spectrogram; speechmos computes it with librosa (which brings numba and
llvmlite), here it is the same computation in numpy, operation for operation in the same dtypes, so the
package's model files are all that is needed: `pip install "mbsbench[dnsmos]"` (speechmos, onnxruntime).
"""

import hashlib
import importlib.metadata
import importlib.util
from functools import cache
from pathlib import Path

import numpy as np

from bench.tracking.schema import DNSMOS_METRICS
from variants.errors import MbsbenchError

RATE = 16000
WINDOW_S = 9.01
HOP_S = 1.0
MODEL_FILES = {"p835": "dnsmos_models/sig_bak_ovr.onnx", "p808": "dnsmos_models/model_v8.onnx"}
# the published calibration of the raw P.835 outputs (non-personalised models): highest power first
CALIBRATION = {
    "dnsmos_sig": (-0.08397278, 1.22083953, 0.0052439),
    "dnsmos_bak": (-0.13166888, 1.60915514, -0.39604546),
    "dnsmos_ovrl": (-0.06766283, 1.11546468, 0.04602535),
}
MEL = {"n_fft": 321, "hop": 160, "bands": 120, "amin": 1e-10, "top_db": 80.0}
MISSING = 'DNSMOS needs the speechmos model files and onnxruntime: pip install "mbsbench[dnsmos]"'


def dnsmos_available() -> bool:
    """Whether the model files (speechmos) and onnxruntime are installed; nothing is imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("speechmos", "onnxruntime"))


def require_dnsmos() -> None:
    if not dnsmos_available():
        raise MbsbenchError(MISSING)


def model_folder() -> Path:
    """The installed speechmos package's folder (found, not imported: its modules import librosa)."""
    require_dnsmos()
    spec = importlib.util.find_spec("speechmos")
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def provenance() -> dict[str, str]:
    """Which scorer: speechmos and onnxruntime versions, and the SHA-256 of each model file."""
    folder = model_folder()
    out = {"dnsmos_scorer": f"speechmos {importlib.metadata.version('speechmos')}, onnxruntime "
                            f"{importlib.metadata.version('onnxruntime')}"}
    for name, relative in MODEL_FILES.items():
        out[f"dnsmos_{name}_sha256"] = hashlib.sha256((folder / relative).read_bytes()).hexdigest()
    return out


@cache
def _sessions() -> dict:
    """One single-threaded onnxruntime session per model, per process (metric pools run one per core)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    folder = model_folder()
    return {name: onnxruntime.InferenceSession(str(folder / relative), options, providers=["CPUExecutionProvider"])
            for name, relative in MODEL_FILES.items()}


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    mels = hz / (200.0 / 3)
    step = np.log(6.4) / 27.0
    high = hz >= 1000.0
    mels[high] = 15.0 + np.log(hz[high] / 1000.0) / step
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    hz = (200.0 / 3) * mels
    step = np.log(6.4) / 27.0
    high = mels >= 15.0
    hz[high] = 1000.0 * np.exp(step * (mels[high] - 15.0))
    return hz


@cache
def mel_filterbank(rate: int = RATE, n_fft: int = MEL["n_fft"], bands: int = MEL["bands"]) -> np.ndarray:
    """Triangular filters on Slaney's mel scale, area-normalised ('slaney'), float32 (bands, n_fft // 2 + 1)."""
    bins = np.fft.rfftfreq(n=n_fft, d=1.0 / rate)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([rate / 2]))[0], bands + 2))
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, bins)
    weights = np.zeros((bands, len(bins)), dtype=np.float32)
    for i in range(bands):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / widths[i], ramps[i + 2] / widths[i + 1]))
    weights *= (2.0 / (edges[2:bands + 2] - edges[:bands]))[:, None]
    return weights


def mel_features(audio: np.ndarray) -> np.ndarray:
    """The P.808 model's input: a centred, zero-padded 321-point Hann STFT (hop 160), power on 120 mel bands, in
    dB below the loudest band (80 dB floor), scaled as (dB + 40) / 40; float32 (frames, bands)."""
    n_fft, hop = MEL["n_fft"], MEL["hop"]
    padded = np.pad(np.asarray(audio, np.float32), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop].T  # (n_fft, frames)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann, float64
    spectrum = np.fft.rfft(window[:, None] * frames, axis=0).astype(np.complex64)
    power = np.abs(spectrum) ** 2
    mel = np.einsum("ft,mf->mt", power, mel_filterbank(), optimize=True)
    db = 10.0 * np.log10(np.maximum(MEL["amin"], mel))
    db -= 10.0 * np.log10(np.maximum(MEL["amin"], mel.max()))
    db = np.maximum(db, db.max() - MEL["top_db"])
    return ((db + 40) / 40).T


def _windows(audio: np.ndarray) -> list[np.ndarray]:
    """The 9.01 s windows at a 1 s hop; a shorter clip is repeated (whole) until it is at least one window."""
    need = int(WINDOW_S * RATE)
    while len(audio) < need:
        audio = np.append(audio, audio)
    hops = int(np.floor(len(audio) / RATE) - WINDOW_S) + 1
    segments = [audio[int(i * HOP_S * RATE):int((i + WINDOW_S) * HOP_S * RATE)] for i in range(hops)]
    return [s for s in segments if len(s) >= need]


def dnsmos_scores(audio: np.ndarray) -> tuple[dict[str, float], str]:
    """DNSMOS P.835 SIG/BAK/OVRL and P.808 MOS of one 16 kHz clip, and a note: samples beyond [-1, 1] are
    clipped as a 16-bit file of the clip would be (speechmos refuses them). The caller rules out silent and
    non-finite clips (metrics.unscorable)."""
    audio = np.asarray(audio, np.float64)
    beyond = int((np.abs(audio) > 1).sum())
    note = f"dnsmos: {beyond} samples beyond [-1, 1] clipped" if beyond else ""
    audio = np.clip(audio, -1.0, 1.0)
    sessions = _sessions()
    rows = []
    for segment in _windows(audio):
        raw = sessions["p835"].run(None, {"input_1": segment.astype(np.float32)[None]})[0][0]
        p808 = sessions["p808"].run(None, {"input_1": mel_features(segment[:-160])[None]})[0][0][0]
        rows.append([np.poly1d(CALIBRATION[name])(value) for name, value in zip(DNSMOS_METRICS, raw)] + [p808])
    means = np.mean(np.array(rows, dtype=np.float64), axis=0)
    return dict(zip(DNSMOS_METRICS, (float(v) for v in means))), note
