"""`bench evaluate`, `bench metrics`, `bench data check` through the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from bench.__main__ import main
from bench.tracking.store import runs_table
from bench.training.checkpoint import save_checkpoint, weights
from variants.registry import build, build_config

RATE = 16000


def voiced_files(folder: Path, count: int = 3) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    clean_dir, noisy_dir = folder / "clean", folder / "noisy"
    clean_dir.mkdir(parents=True)
    noisy_dir.mkdir(parents=True)
    t = np.arange(2 * RATE) / RATE
    for k in range(count):
        clean = 0.1 * np.sin(2 * np.pi * (150 + 20 * k) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
        clean = clean + 1e-3 * rng.standard_normal(len(t))
        sf.write(clean_dir / f"u{k}.wav", clean, RATE)
        sf.write(noisy_dir / f"u{k}.wav", clean + 0.02 * rng.standard_normal(len(t)), RATE)
    return clean_dir, noisy_dir


def test_evaluate_noisy_logs_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clean, noisy = voiced_files(tmp_path / "data")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["evaluate", "--data", f"paired:{clean},{noisy}", "--noisy", "--workers", "1", "--pcs", "--no-dnsmos",
            "--out", str(tmp_path / "out"), "--tracking-uri", uri, "--format", "json"]
    assert main(args) == 0
    summary = {row["metric"]: row for row in json.loads(capsys.readouterr().out)}
    assert summary["pesq_wb"]["n_scored"] == 3 and summary["pesq_wb_pcs"]["n_total"] == 3
    per_utt = (tmp_path / "out" / "per_utterance.csv").read_text().splitlines()
    assert len(per_utt) == 4 and "pesq_wb_pcs" in per_utt[0]
    run = runs_table(uri, "mbsbench-evaluate").iloc[0]
    assert run["pesq_wb"] == pytest.approx(summary["pesq_wb"]["mean"])
    assert run["data_fingerprint"] and run["composite_mode"] == "matlab"


def test_evaluate_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clean, noisy = voiced_files(tmp_path / "data", 2)
    cfg = build_config("optimized", feature_dim=32)
    model = build("optimized", feature_dim=32)
    save_checkpoint(tmp_path / "best.pt", weights(model, cfg, "optimized"))
    args = ["evaluate", "--data", f"paired:{clean},{noisy}", "--variant", "optimized", "--set", "feature_dim=32",
            "--checkpoint", str(tmp_path / "best.pt"), "--workers", "1", "--no-track", "--no-dnsmos", "--out",
            str(tmp_path / "o")]
    assert main(args) == 0
    assert "optimized on paired" in capsys.readouterr().out


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *argv], capture_output=True, text=True, timeout=300)


@pytest.mark.processes  # a real `python -m bench` process
def test_checkpoint_of_another_variant(tmp_path: Path) -> None:
    clean, noisy = voiced_files(tmp_path / "data", 1)
    save_checkpoint(tmp_path / "b.pt", weights(build("bsrnn"), build_config("bsrnn"), "bsrnn"))
    proc = run_cli("evaluate", "--data", f"paired:{clean},{noisy}", "--variant", "optimized",
                   "--checkpoint", str(tmp_path / "b.pt"), "--no-track")
    assert proc.returncode == 2 and "was trained as 'bsrnn', not 'optimized'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.processes  # real `python -m bench` processes: one line, no traceback
@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["evaluate", "--data", "nonsense", "--noisy", "--no-track"], "unknown data spec"),
        (["evaluate", "--data", "synth", "--no-track"], "needs --noisy"),
        (["metrics", "--clean", "/nonexistent.wav", "--enhanced", "/nonexistent.wav"], "unreadable"),
        (["data", "check", "paired:/nonexistent/a,/nonexistent/b"], "no such folder"),
    ],
)
def test_quality_bad_input(argv: list[str], fragment: str) -> None:
    proc = run_cli(*argv)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


def test_metrics_one_pair(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clean, noisy = voiced_files(tmp_path, 1)
    assert main(["metrics", "--clean", str(clean / "u0.wav"), "--enhanced", str(noisy / "u0.wav"),
                 "--format", "json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert 1.0 < scores["pesq_wb"] < 4.7 and 0 < scores["stoi"] <= 1


def test_data_check_lists_problems(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clean, noisy = voiced_files(tmp_path, 2)
    (noisy / "u1.wav").unlink()
    assert main(["data", "check", f"paired:{clean},{noisy}"]) == 0
    out = capsys.readouterr().out
    assert "1 problems" in out and "u1.wav: missing counterpart (skipped)" in out


def test_pcs_is_parameter_free_and_level_dependent() -> None:
    from variants.pcs import pcs_gains, perceptual_contrast_stretch

    gains = pcs_gains()
    assert gains.shape == (201,) and gains[0] == 1.0 and gains[50] == pytest.approx(1.4)
    wav = torch.randn(1, RATE) * 0.1
    out = perceptual_contrast_stretch(wav)
    assert out.shape == wav.shape and not torch.allclose(out, wav)
    quiet = perceptual_contrast_stretch(wav * 0.01) / 0.01
    assert not torch.allclose(quiet, out, rtol=0.05)  # log1p works on absolute levels


def test_pcs_flag_is_applied_once(tmp_path: Path) -> None:
    """Defect 2: with --set pcs=true the PCS columns are PCS once, the plain ones none: as with pcs=false."""
    from bench.data.datasets import open_dataset
    from bench.quality.evaluate import evaluate

    clean, noisy = voiced_files(tmp_path, 2)
    dataset = open_dataset(f"paired:{clean},{noisy}")
    tables = []
    for pcs in (False, True):
        torch.manual_seed(0)
        model = build("optimized", feature_dim=16, pcs=pcs)
        result, _ = evaluate(dataset, "test", model, with_pcs=True, workers=1)
        tables.append(result.per_utterance.drop(columns="reasons"))
    assert tables[0]["pesq_wb_pcs"].notna().all() and not tables[0]["pesq_wb_pcs"].equals(tables[0]["pesq_wb"])
    pd.testing.assert_frame_equal(tables[1], tables[0], rtol=1e-12)  # ESTOI varies in its last bit between calls


@pytest.mark.processes  # a real `python -m bench` process
def test_evaluate_checks_the_tracking_store_before_scoring(tmp_path: Path) -> None:
    """Defect 7: an unusable tracking URI stops `bench evaluate` before any utterance is scored."""
    clean, noisy = voiced_files(tmp_path / "data", 1)
    proc = run_cli("evaluate", "--data", f"paired:{clean},{noisy}", "--noisy", "--workers", "1", "--out",
                   str(tmp_path / "out"), "--tracking-uri", "sqlite:////nonexistent/dir/x.db")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (tmp_path / "out").exists()
