"""Issue 24, item 12: numbers with no upper bound, folders where files belong, and messages that named the
wrong thing: each one line (exit 2) naming the flag, the value and what was expected."""

from pathlib import Path

import pandas as pd
import pytest

from bench.__main__ import main as bench
from reports.__main__ import main as reports
from studies.__main__ import main as studies

TINY = ["--set", "feature_dim=16", "--set", "temporal_layers=1"]


@pytest.mark.parametrize(("cli", "argv", "fragment"), [
    (bench, ["run", "--variant", "optimized", "--seeds", str(2**64), "--no-track"],
     f"--seeds {2**64}: expected comma-separated integers >= 0 and <= 2147483647"),
    (bench, ["params", "--variant", "optimized", "--set", "feature_dim=100000000"], "expected at most 4096"),
    (bench, ["profile", "--variant", "optimized", "--set", "feature_dim=4096", "--set", "expand=32", "--set",
             "temporal_layers=64", "--seconds", "0.1", "--no-track"], "GiB of weights alone; cpu has"),
    (studies, ["work", "x", "--heartbeat", str(10**14)], "expected an integer >= 1 and <= 86400"),
    (studies, ["show", "x", "--storage", "foo://bar"], "--storage foo://bar: unknown scheme 'foo'"),
    (studies, ["show", "x", "--storage", "{tmp}"], "--storage {tmp}: a folder; expected a journal file"),
    (bench, ["ablate", "--base", "optimized", "--queue", "{tmp}"], "--queue {tmp}: a folder"),
    (reports, ["tables", "--out", "{tmp}/file/x", "--tracking-uri", "sqlite:///{tmp}/none.db"], "not writable"),
    (reports, ["plots", "--out", "{tmp}/file/x"], "--out {tmp}/file/x: not writable"),
])
def test_one_line_each(cli, argv: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file").write_text("")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "not writable" in fragment and "tables" in argv:
        from bench.tracking.store import client

        client(f"sqlite:///{tmp_path}/none.db")  # a store to read: the folder is what is wrong
        assert bench(["profile", "--variant", "optimized", *TINY, "--seconds", "0.1", "--repeats", "1", "--no-rss",
                      "--tracking-uri", f"sqlite:///{tmp_path}/none.db", "-q"]) == 0
        capsys.readouterr()
    assert exit_code(cli, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment.replace("{tmp}", str(tmp_path)) in err[0], err


def exit_code(cli, argv: list[str]) -> int:
    """The CLI's exit code, whether it returned it or argparse exited with it."""
    try:
        return cli(argv)
    except SystemExit as err:
        return err.code


def test_a_study_of_other_settings_names_the_setting(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """It said 'created with another spec (ablation, ablation)'."""
    queue = ["ablate", "--base", "optimized", "--changes", "d_state12", "--queue", str(tmp_path / "q.log"), "-q"]
    assert bench([*queue, "--steps", "5"]) == 0
    assert bench([*queue, "--steps", "6"]) == 2
    assert "(in the study vs here: ablation.request.steps: 5 vs 6)" in capsys.readouterr().err


def test_the_devices_of_a_store_include_its_trained_runs() -> None:
    """'devices there: none' for a store that held a CPU run and no profile."""
    from reports.collect import Store

    runs = pd.DataFrame({"start_time": [2, 1], "device": ["CPU b", "CPU a"]})
    store = Store("sqlite:///x.db", pd.DataFrame(), runs, pd.DataFrame(), pd.DataFrame())
    assert store.devices() == ["CPU a", "CPU b"]
