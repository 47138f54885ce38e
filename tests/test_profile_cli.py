"""`bench profile` end to end: figures printed are the figures MLflow holds; bad input is one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.tracking.schema import PROFILE_FIGURES as FIGURES
from bench.tracking.store import runs_table

TINY = ["--variant", "optimized", "--set", "feature_dim=32", "--batch", "1", "--seconds", "0.1", "--repeats", "1"]


def test_profile_logs_every_printed_figure(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["profile", *TINY, "--no-rss", "--tracking-uri", uri, "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "ok" and row["params"] > 0 and row["peak_mem_train_mib"] > 0
    runs = runs_table(uri, "mbsbench-profile")
    assert len(runs) == 1
    run = runs.iloc[0]
    logged = [k for k in FIGURES if isinstance(row.get(k), int | float)]
    assert len(logged) >= 15
    for key in logged:
        assert run[key] == pytest.approx(row[key]), key
    assert run["feature_dim"] == "32"
    assert run["git_commit"] and run["device"].startswith("CPU")
    assert run["version_torch"].startswith("2.")


def test_profile_table_without_tracking(capsys: pytest.CaptureFixture) -> None:
    assert main(["profile", *TINY, "--no-track", "--no-rss"]) == 0
    out = capsys.readouterr().out
    assert "optimized" in out and "peak_mem_train_mib" in out


@pytest.mark.processes  # each case a real `python -m bench` process: one line, no traceback
@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--device", "cuda"], "no CUDA device"),
        (["--batch", "0"], "--batch 0"),
        (["--top-ops", "0"], "--top-ops 0"),
        (["--seconds", "-1"], "--seconds -1: expected a number > 0.032"),
        (["--tracking-uri", "http://127.0.0.1:9"], "unreachable"),
        (["--tracking-uri", "sqlite:////nonexistent/dir/x.db"], "does not exist"),
    ],
)
def test_profile_bad_input(extra: list[str], fragment: str) -> None:
    if "--device" in extra and extra[1] == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    argv = [sys.executable, "-m", "bench", "profile", "--variant", "optimized", "--no-rss", *extra]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


def test_sweep_goes_on_after_a_failure(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import bench.profiling.profile as cli
    import variants.registry as registry

    real = cli.profile_variant

    def flaky(name, cfg, settings):
        if name == "bsrnn":
            raise RuntimeError("boom")
        return real(name, cfg, settings)

    monkeypatch.setattr(cli, "profile_variant", flaky)
    monkeypatch.setattr(registry, "all_names", lambda: ["bsrnn", "optimized"])
    args = ["profile", "--all", "--set", "feature_dim=32", "--batch", "1", "--seconds", "0.1", "--repeats", "1"]
    assert main([*args, "--no-track", "--no-rss", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["error", "ok"]
    assert "boom" in rows[0]["reason"]


@pytest.mark.processes  # each row runs in a fresh spawned process
def test_profile_compare_times_each_scan_and_chunk(capsys: pytest.CaptureFixture) -> None:
    argv = ["profile", "--compare", "optimized", "--set", "feature_dim=32", "--batch", "1", "--seconds", "0.1",
            "--repeats", "1", "--scans", "naive,chunked_ckpt", "--chunks", "8,16", "--format", "json"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["scan"], r["chunk"]) for r in rows] == [("naive", 32), ("chunked_ckpt", 8), ("chunked_ckpt", 16)]
    for row in rows:
        assert row["variant"] == "optimized" and row["infer_step_s"] > 0 and row["train_step_s"] > 0
        assert row["rtf_train"] == pytest.approx(row["train_step_s"] / 0.1)


def test_profile_top_ops_tables(capsys: pytest.CaptureFixture) -> None:
    assert main(["profile", *TINY, "--top-ops", "4"]) == 0
    out = capsys.readouterr().out
    assert "optimized, train step" in out and "optimized, infer step" in out
    assert out.count("Self CPU time total") == 2 and out.count("aten::") >= 4
