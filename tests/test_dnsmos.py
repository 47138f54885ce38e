"""DNSMOS on real speech: equal to the speechmos package's own call, rising with the SNR; recordings without a
clean side scored by it alone; every score says which scorer made it."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bench.__main__ import main as bench
from bench.quality.dnsmos import dnsmos_available, dnsmos_scores, mel_features
from bench.quality.metrics import score_pair
from bench.tracking.schema import DNSMOS_METRICS, WORST

pytestmark = pytest.mark.skipif(not dnsmos_available(), reason="needs the [dnsmos] extra")
ARCTIC = Path(__file__).parent / "data" / "arctic_a0007.wav"
RATE = 16000


def real_speech(seconds: float = 2.75) -> np.ndarray:
    """CMU ARCTIC a0007 (tests/data/README.md), cut: 2.75 s repeats to 11 s, two DNSMOS windows."""
    wav, rate = sf.read(ARCTIC, dtype="float32")
    assert rate == RATE
    return wav[:int(seconds * RATE)]


def with_noise(clean: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(clean)).astype(np.float32)
    noisy = clean + noise * np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return (noisy / max(1.0, float(np.abs(noisy).max()))).astype(np.float32)


def test_the_mel_front_end_is_librosas_bit_for_bit() -> None:
    """speechmos feeds its P.808 model librosa's mel spectrogram; ours is numpy, operation for operation."""
    pytest.importorskip("librosa")
    from speechmos.dnsmos import DNSMOS

    segment = np.tile(real_speech(4.0), 3)[:int(9.01 * RATE) - 160]
    theirs = DNSMOS.audio_melspec(None, segment)
    assert np.array_equal(mel_features(segment), theirs)


def test_real_speech_scores_rise_with_the_snr_and_equal_the_package() -> None:
    clean = real_speech()
    scores = {snr: dnsmos_scores(with_noise(clean, snr))[0] for snr in (0, 10, 20)}
    for name in ("dnsmos_ovrl", "dnsmos_bak"):
        assert scores[0][name] < scores[10][name] < scores[20][name], (name, scores)
    pytest.importorskip("librosa")
    from speechmos import dnsmos as package

    theirs = package.run(with_noise(clean, 10), RATE)
    ours = scores[10]
    for name, key in zip(DNSMOS_METRICS, ("sig_mos", "bak_mos", "ovrl_mos", "p808_mos")):
        assert ours[name] == pytest.approx(float(theirs[key]), abs=1e-6), name


def test_an_unscorable_output_gets_the_bottom_of_the_scale() -> None:
    clean = real_speech(1.0)
    scores = score_pair(clean, np.zeros_like(clean), dnsmos=True)
    assert scores["failed"] and all(scores[m] == WORST[m] == 1.0 for m in DNSMOS_METRICS)
    alone = score_pair(None, np.full_like(clean, np.nan), dnsmos=True)
    assert alone["failed"] and all(alone[m] == 1.0 for m in DNSMOS_METRICS)
    assert math.isnan(alone["pesq_wb"])


def test_a_folder_of_recordings_is_scored_by_dnsmos_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    for snr in (0, 20):  # 2.4 s repeats to 9.6 s: one window each
        sf.write(folder / f"arctic_{snr}dB.wav", with_noise(real_speech(2.4), snr), RATE)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert bench(["evaluate", "--data", f"folder:{folder}", "--noisy", "--workers", "1", "--tracking-uri", uri,
                  "--out", str(tmp_path / "out"), "--format", "json"]) == 0
    summary = pd.DataFrame(json.loads(capsys.readouterr().out)).set_index("metric")
    assert (summary.loc[list(DNSMOS_METRICS), "n_scored"] == 2).all()
    assert (summary.loc["pesq_wb", ["n_scored", "n_total"]] == [0, 2]).all()  # '-' in the table, never 0
    from bench.tracking.store import runs_table

    run = runs_table(uri, "mbsbench-evaluate").iloc[0]  # the scorer, with the hashes of its model files
    assert run["dnsmos_ovrl"] == pytest.approx(summary.loc["dnsmos_ovrl", "mean"])
    assert run["dnsmos_scorer"].startswith("speechmos 0.0.1.1, onnxruntime ") and len(run["dnsmos_p835_sha256"]) == 64
    assert "scorer_pesq" not in run or not isinstance(run["scorer_pesq"], str)  # no intrusive scorer ran
    assert bench(["metrics", "--enhanced", str(folder / "arctic_20dB.wav")]) == 0
    out = capsys.readouterr().out
    assert "dnsmos_ovrl" in out and "speechmos 0.0.1.1" in out and "sha256" in out
    assert bench(["run", "--variant", "optimized", "--data", f"folder:{folder}", "--steps", "1", "--no-track",
                  "--out", str(tmp_path / "runs")]) == 2
    assert "noisy recordings only" in capsys.readouterr().err


def test_dnsmos_without_the_extra_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.quality.dnsmos as module

    monkeypatch.setattr(module, "dnsmos_available", lambda: False)
    wav = tmp_path / "x.wav"
    sf.write(wav, real_speech(1.0), RATE)
    for argv in (["metrics", "--enhanced", str(wav)], ["metrics", "--enhanced", str(wav), "--clean", str(wav),
                                                        "--dnsmos"]):
        assert bench(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and 'pip install "mbsbench[dnsmos]"' in err[0], err
    assert bench(["metrics", "--enhanced", str(wav), "--clean", str(wav), "--format", "json"]) == 0  # auto: off
    assert "dnsmos_ovrl" not in capsys.readouterr().out


def test_runs_of_different_scorers_are_never_averaged() -> None:
    from reports.collect import scorers_of
    from variants.errors import MbsbenchError

    runs = pd.DataFrame({"run_id": ["a1", "b2", "c3"], "scorer_pesq": ["pesq 0.0.4"] * 3,
                         "dnsmos_scorer": ["speechmos 0.0.1.1, onnxruntime 1.32.0", None,
                                           "speechmos 0.0.2, onnxruntime 1.32.0"]})
    with pytest.raises(MbsbenchError, match=r"dnsmos_scorer is 'speechmos 0.0.1.1.*run a1 .*0.0.2.* run c3"):
        scorers_of(runs)
    assert scorers_of(runs.iloc[:2]) == {"scorer_pesq": "pesq 0.0.4",
                                         "dnsmos_scorer": "speechmos 0.0.1.1, onnxruntime 1.32.0"}
