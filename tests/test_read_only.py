"""Commands that only read write nothing, and a place that cannot be written is one line, exit 2."""

from pathlib import Path

import pytest

from bench.__main__ import main as bench
from reports.__main__ import main as reports
from studies.__main__ import main as studies


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_reports_of_a_store_that_is_not_there_create_none(tmp_path: Path, capsys) -> None:
    """A mistyped store name made a new 954 KB database and reported it empty."""
    assert reports(["tables", "--tracking-uri", "sqlite:///nothere.db"]) == 2
    assert "no such store" in one_error_line(capsys) and not Path("nothere.db").exists()
    assert list(tmp_path.iterdir()) == []


def test_showing_a_study_that_is_not_there_creates_no_journal(tmp_path: Path, capsys) -> None:
    assert studies(["show", "nosuch", "--storage", "nothere.log"]) == 2
    assert "no such storage" in one_error_line(capsys) and list(tmp_path.iterdir()) == []


def test_resume_with_nothing_to_resume_creates_no_folder(tmp_path: Path, capsys) -> None:
    assert bench(["run", "--variant", "optimized", "--resume", "--no-track"]) == 2
    assert "nothing to resume" in one_error_line(capsys) and list(tmp_path.iterdir()) == []


def test_a_tracking_store_that_cannot_be_written_is_one_line(capsys) -> None:
    argv = ["profile", "--variant", "optimized", "--set", "feature_dim=16", "--batch", "1", "--seconds", "0.1",
            "--no-rss", "--tracking-uri", "sqlite:////proc/mbsbench-x.db"]
    assert bench(argv) == 2
    assert one_error_line(capsys).startswith("error: tracking URI sqlite:////proc/mbsbench-x.db: not usable")


def test_a_cache_that_cannot_be_written_is_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setenv("MBSBENCH_CACHE", "/proc/mbsbench-nope")
    assert bench(["evaluate", "--data", "synth:seed=11", "--noisy", "--workers", "1"]) == 2
    assert "set MBSBENCH_CACHE to a writable folder" in one_error_line(capsys)
