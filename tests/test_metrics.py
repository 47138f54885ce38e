"""Metrics: direct-call equality, known behaviour, and composite values from independent scorers."""

import itertools

import numpy as np
import pandas as pd
import pytest
from pesq import pesq
from pystoi import stoi

from bench.quality.composite import composite, llr_frames, matlab_round, wss_frames
from bench.quality.metrics import score_pair, si_sdr, summarize

RATE = 16000


def voiced(seed: int, snr_db: float | None = None, seconds: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """A gliding 19-harmonic tone with a 3 Hz envelope and a -60 dB floor, plus white noise at snr_db."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.7 * t)) / RATE
    clean = sum(np.sin(k * phase) / k for k in range(1, 20)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) ** 2
    clean = 0.1 * clean / np.abs(clean).max() + 1e-3 * rng.standard_normal(len(t))
    if snr_db is None:
        return clean, clean.copy()
    noise = rng.standard_normal(len(t))
    noise *= np.sqrt(np.mean(clean**2) / 10 ** (snr_db / 10) / np.mean(noise**2))
    return clean, clean + noise


# Independent computations on voiced(seed, snr): pysepm (github schmiph2/pysepm, qualityMeasures.wss,
# llr(used_for_composite=True), SNRseg), which follows composite.m, and the Python port SE papers copy
# (CMGAN tools/compute_metrics.py, wss/llr/snr on the float arrays, 95% rule with Python round).
# Columns: seed, snr, WSS (MATLAB), LLR, segmental SNR, WSS of the port (frames / 32768).
INDEPENDENT = [
    (0, 0.0, 30.43142974663421, 2.5221014361461767, -3.2515924394153006, 12.551377456716754),
    (1, 10.0, 15.553986222794657, 1.519732339706752, 4.4706214972631395, 1.4380493812978272),
]


@pytest.mark.parametrize("seed,snr,wss,llr,ssnr,wss_port", INDEPENDENT)
def test_composite_parts_match_independent_scorers(seed, snr, wss, llr, ssnr, wss_port) -> None:
    clean, noisy = voiced(seed, snr)
    ours = composite(clean, noisy, pesq_mos=2.0)
    assert ours["wss"] == pytest.approx(wss, rel=1e-9)
    assert ours["llr"] == pytest.approx(llr, rel=1e-6)
    assert ours["ssnr"] == pytest.approx(ssnr, rel=1e-9)
    port = composite(clean, noisy, pesq_mos=2.0, compat=True)
    assert port["wss"] == pytest.approx(wss_port, rel=1e-9)
    assert port["csig"] - ours["csig"] == pytest.approx(0.009 * (wss - wss_port), rel=1e-6)


def test_composite_formulas() -> None:
    clean, noisy = voiced(1, 10.0)
    parts = composite(clean, noisy, pesq_mos=2.0)
    assert parts["csig"] == pytest.approx(3.093 - 1.029 * parts["llr"] + 0.603 * 2.0 - 0.009 * parts["wss"])
    assert parts["cbak"] == pytest.approx(1.634 + 0.478 * 2.0 - 0.007 * parts["wss"] + 0.063 * parts["ssnr"])
    assert parts["covl"] == pytest.approx(1.594 + 0.805 * 2.0 - 0.512 * parts["llr"] - 0.007 * parts["wss"])


def test_identical_signals_give_the_maximum() -> None:
    clean, _ = voiced(0)
    scores = score_pair(clean, clean)
    assert scores["pesq_wb"] == pytest.approx(4.64, abs=0.01)
    assert scores["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert (scores["csig"], scores["cbak"], scores["covl"]) == (5.0, 5.0, 5.0)
    assert scores["ssnr"] == 35.0 and scores["wss"] == 0.0 and scores["llr"] == pytest.approx(0.0, abs=1e-12)


def test_more_noise_scores_lower() -> None:
    parts = [composite(*voiced(3, snr), pesq_mos=2.5) for snr in (20.0, 10.0, 5.0, 0.0, -5.0)]
    for better, worse in itertools.pairwise(parts):
        assert worse["ssnr"] < better["ssnr"] and worse["wss"] > better["wss"] and worse["llr"] > better["llr"]
        assert worse["csig"] <= better["csig"] and worse["cbak"] < better["cbak"]


def test_pesq_and_stoi_equal_direct_calls() -> None:
    clean, noisy = voiced(4, 5.0)
    scores = score_pair(clean, noisy)
    assert scores["pesq_wb"] == pesq(RATE, clean, noisy, "wb")
    # pystoi's sums are not bit-reproducible from call to call: equal to 1e-12
    assert scores["stoi"] == pytest.approx(stoi(clean, noisy, RATE, extended=False), rel=1e-12)
    assert scores["estoi"] == pytest.approx(stoi(clean, noisy, RATE, extended=True), rel=1e-12)


def test_matlab_rounding_differs_from_python() -> None:
    assert matlab_round(28.5) == 29 and round(28.5) == 28
    assert matlab_round(2.4) == 2 and matlab_round(-2.5) == -3


def test_digital_silence_is_not_nan_but_pins_the_port() -> None:
    clean, noisy = voiced(5, 10.0)
    clean[8000:16000] = 0.0
    noisy[8000:16000] = 0.0
    assert np.isfinite(llr_frames(clean + 2.220446049250313e-16, noisy + 2.220446049250313e-16, RATE)).all()
    ours = composite(clean, noisy, pesq_mos=2.0)
    port = composite(clean, noisy, pesq_mos=2.0, compat=True)
    assert np.isfinite(ours["llr"]) and ours["csig"] > 1.0
    assert np.isnan(port["llr"]) and port["csig"] == 1.0 and port["covl"] == 1.0


def test_wss_ignores_content_above_4khz() -> None:
    clean, _ = voiced(6)
    t = np.arange(len(clean)) / RATE
    shifted = clean + 0.05 * np.sin(2 * np.pi * 6000 * t)
    assert wss_frames(clean, shifted, RATE).max() < 1e-6


def test_unscorable_utterances_are_nan_with_reasons() -> None:
    short = np.random.default_rng(0).standard_normal(RATE // 10) * 0.1
    scores = score_pair(short, short)
    assert np.isnan(scores["pesq_wb"]) and "pesq" in scores["reasons"]
    assert np.isnan(scores["csig"])
    silent = np.zeros(RATE * 2)
    scores = score_pair(silent, silent + 1e-4)
    assert np.isnan(scores["stoi"]) and np.isnan(scores["si_sdr"]) and not scores["failed"]
    assert scores["reasons"] == "reference is digital silence"  # left out: not the model's failure


def test_unscorable_outputs_score_the_worst_value() -> None:
    """A silent or non-finite output is the model's failure: the worst value of every metric, not NaN."""
    from bench.tracking.schema import METRICS, WORST

    clean = np.random.default_rng(1).standard_normal(RATE) * 0.1
    for output, reason in ((np.zeros(RATE), "digital silence"), (np.full(RATE, np.nan), "non-finite")):
        scores = score_pair(clean, output)
        assert scores["failed"] and reason in scores["reasons"]
        assert {m: scores[m] for m in METRICS} == {m: WORST[m] for m in METRICS}
    table = pd.DataFrame([score_pair(clean, clean * 0.5), score_pair(clean, np.zeros(RATE)),
                          score_pair(np.zeros(RATE), clean)])
    summary = summarize(table).set_index("metric")
    assert summary.loc["si_sdr", ["n_scored", "n_failed", "n_total"]].tolist() == [2, 1, 3]
    assert np.isfinite(summary.loc["si_sdr", "mean"])
    assert summary.loc["pesq_wb", "mean"] == pytest.approx((table.loc[0, "pesq_wb"] + WORST["pesq_wb"]) / 2)


def test_si_sdr_of_known_mixture() -> None:
    rng = np.random.default_rng(0)
    s = rng.standard_normal(16000)
    n = rng.standard_normal(16000)
    n -= n.mean() + np.dot(n - n.mean(), s - s.mean()) / np.dot(s - s.mean(), s - s.mean()) * (s - s.mean())
    n *= np.linalg.norm(s - s.mean()) / np.linalg.norm(n) / 10  # exactly 20 dB below, orthogonal
    assert si_sdr(s, 3.0 * (s + n))[0] == pytest.approx(20.0, abs=1e-6)


def test_summary_counts_scored() -> None:
    import pandas as pd

    table = pd.DataFrame({"pesq_wb": [2.0, 3.0, float("nan")], "stoi": [0.9, 0.8, 0.7]})
    summary = summarize(table).set_index("metric")
    assert summary.loc["pesq_wb", "n_scored"] == 2 and summary.loc["pesq_wb", "n_total"] == 3
    assert summary.loc["pesq_wb", "mean"] == pytest.approx(2.5)
    assert summary.loc["stoi", "ci95"] == pytest.approx(4.302652729911275 * 0.1 / np.sqrt(3))
