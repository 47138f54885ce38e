"""A worker that cannot do the work leaves the queue as it was; a failed point is queued again on request; a
tracking store that fails under a worker costs a warning, never the trial's figures."""

import errno
from pathlib import Path

import optuna
import pytest

from bench.__main__ import main as bench
from studies import trials
from studies.__main__ import main as studies
from studies.spec import TrialFailedError
from studies.storage import make_storage

TINY = ["--set", "feature_dim=16", "--set", "temporal_layers=1"]
NAME = "ablate-optimized-profile"


def queue(journal: Path, *extra: str) -> None:
    assert bench(["ablate", "--base", "optimized", "--changes", "d_state12", "--profile-only", *TINY, "--batch", "1",
                  "--crop-seconds", "0.1", "--queue", str(journal), "--no-track", "-q", *extra]) == 0


def states(journal: Path) -> list[str]:
    study = optuna.load_study(study_name=NAME, storage=make_storage(str(journal)))
    return sorted(t.state.name for t in study.trials)


def test_a_worker_checks_its_folder_and_data_before_taking_a_trial(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """It took every trial and failed each in seconds (exit 0), and the points could never be queued again."""
    journal = tmp_path / "q.log"
    assert bench(["ablate", "--base", "optimized", "--changes", "d_state12", *TINY, "--steps", "1", "--data",
                  f"vbd:{tmp_path}/nowhere", "--queue", str(journal), "--no-track", "-q"]) == 0  # data is per machine
    (tmp_path / "file").write_text("")
    capsys.readouterr()
    assert studies(["work", "ablate-optimized", "--storage", str(journal), "--out", str(tmp_path / "file" / "runs"),
                    "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0], err
    assert bench(["ablate", "--base", "optimized", "--changes", "d_state12", *TINY, "--steps", "1", "--queue",
                  str(journal), "--study-name", "synth", "--no-track", "-q"]) == 0
    capsys.readouterr()
    assert studies(["work", "synth", "--storage", str(journal), "--out", str(tmp_path / "file" / "runs"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/file/runs: not writable" in err[0], err
    for name in ("ablate-optimized", "synth"):
        study = optuna.load_study(study_name=name, storage=make_storage(str(journal)))
        assert sorted(t.state.name for t in study.trials) == ["WAITING", "WAITING"]  # nothing taken or failed


def test_a_problem_of_the_machine_mid_trial_puts_the_trial_back(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    journal = tmp_path / "q.log"
    queue(journal)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(trials, "_profile_pair", disk_full)
        capsys.readouterr()
        assert studies(["work", NAME, "--storage", str(journal), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "put back in the queue" in err[0] and "No space left" in err[0], err
    assert states(journal) == ["FAIL", "WAITING", "WAITING"]  # the failed one is queued again, uncounted
    assert studies(["work", NAME, "--storage", str(journal), "-q"]) == 0
    study = optuna.load_study(study_name=NAME, storage=make_storage(str(journal)))
    done = sorted((t.params["variant"], t.params["seed"]) for t in study.trials if t.state.name == "COMPLETE")
    assert done == [("optimized", 0), ("optimized-d_state12", 0)]  # each point measured exactly once


def test_retry_failed_queues_the_failed_points_again(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    journal = tmp_path / "q.log"
    queue(journal)
    real = trials._profile_pair

    def flaky(spec, trial, pair, device):
        if pair[0].endswith("d_state12"):
            raise TrialFailedError("out of memory")
        return real(spec, trial, pair, device)

    with monkeypatch.context() as patch:
        patch.setattr(trials, "_profile_pair", flaky)
        assert studies(["work", NAME, "--storage", str(journal), "-q"]) == 0
    assert states(journal) == ["COMPLETE", "FAIL"]
    capsys.readouterr()
    queue(journal)  # queued again without the flag: nothing new
    assert "0 (variant, seed) pairs queued (2 before)\n" in capsys.readouterr().out
    queue(journal, "--retry-failed")
    assert "0 (variant, seed) pairs queued (2 before), 1 failed points queued again" in capsys.readouterr().out
    assert studies(["work", NAME, "--storage", str(journal), "-q"]) == 0
    assert states(journal) == ["COMPLETE", "COMPLETE", "FAIL"]
    assert studies(["show", NAME, "--storage", str(journal)]) == 0
    assert "failed: out of memory" in capsys.readouterr().out  # each FAIL's reason


def test_a_tracking_store_failing_under_a_worker_costs_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker died and the measured value was lost (the trial RUNNING forever on a journal)."""
    from bench.tracking.store import mlflow_module

    def store_down(*args, **kwargs):
        raise mlflow_module().exceptions.MlflowException("connection refused")

    monkeypatch.setattr(trials, "record_trial", store_down)
    journal = tmp_path / "s.log"
    assert studies(["search", "--space", "d_state", "--objective", "params", "--trials", "2", "--storage",
                    str(journal), "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--study-name", "p", "-q"]) == 0
    study = optuna.load_study(study_name="p", storage=make_storage(str(journal)))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"] and all(t.values[0] > 0
                                                                                      for t in study.trials)
    assert capsys.readouterr().err.count("MLflow logging failed (MlflowException: connection refused)") == 2


def params_search(journal: Path, name: str, trials: int) -> int:
    return studies(["search", "--space", "d_state", "--objective", "params", "--trials", str(trials), "--storage",
                    str(journal), "--study-name", name, "--no-track", "-q"])


def test_an_append_never_lands_on_a_torn_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A cut last line (kill, power cut, full disk) was glued to the next append: every study of the journal
    was then unreadable (JSONDecodeError, or Optuna's 'Should not reach')."""
    journal = tmp_path / "s.log"
    assert params_search(journal, "a", 2) == 0
    whole = journal.read_bytes()
    journal.write_bytes(whole + whole.splitlines(keepends=True)[-1][:25])  # a write cut short
    assert params_search(journal, "b", 2) == 0  # another study, the same journal
    assert params_search(journal, "a", 3) == 0
    assert (tmp_path / "s.log.torn").read_bytes() == whole.splitlines(keepends=True)[-1][:25] + b"\n"
    for name, count in (("a", 5), ("b", 2)):  # a grid: --trials 3 queued three more points
        study = optuna.load_study(study_name=name, storage=make_storage(str(journal)))
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * count


def test_a_journal_damaged_before_is_named_and_repaired(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    journal = tmp_path / "s.log"
    assert params_search(journal, "a", 2) == 0
    lines = journal.read_bytes().splitlines(keepends=True)
    # what an append after a torn line made before the fix: line 4 a fragment glued to a whole record
    journal.write_bytes(b"".join(lines[:3]) + lines[3][:30] + b"".join(lines[3:]))
    capsys.readouterr()
    assert studies(["show", "a", "--storage", str(journal)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 4 is not a complete record" in err[0] and "repair" in err[0], err
    assert studies(["repair", "--storage", str(journal)]) == 0
    assert f"{len(lines)} complete records kept, 1 damaged lines mended" in capsys.readouterr().out
    assert journal.read_bytes() == b"".join(lines)  # every complete record, the glued one too
    assert studies(["show", "a", "--storage", str(journal)]) == 0
    assert len(list(tmp_path.glob("s.log.bak-*"))) == 1


def test_an_interrupt_reports_the_trials_it_marked_or_none(tmp_path: Path) -> None:
    """The interrupt's line is read back from the study: the trials its workers marked, never a blanket claim."""
    import socket
    from types import SimpleNamespace

    from studies.runner import _interrupted_trials
    from studies.storage import StorageSettings

    journal = tmp_path / "q.log"
    queue(journal)
    study = optuna.load_study(study_name=NAME, storage=make_storage(str(journal)))
    trial = study.ask()
    trial.set_user_attr("worker", f"{socket.gethostname()}:4242")
    trial.set_user_attr("fail_reason", "interrupted")
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    marked = _interrupted_trials(NAME, StorageSettings(str(journal)), [SimpleNamespace(pid=4242, exitcode=130)])
    assert marked == f"trial {trial.number} marked interrupted and queued again"
    others = _interrupted_trials(NAME, StorageSettings(str(journal)), [SimpleNamespace(pid=4343, exitcode=130)])
    assert others == "no trial was in flight"
