"""Optuna studies: resumable, no repeated trials, failures recorded, clear errors."""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from studies import trials as runner
from studies.__main__ import main
from studies.space import KNOBS, Knob, parse_space
from studies.spec import TrialFailedError
from studies.storage import make_storage
from variants.errors import MbsbenchError

SEARCH = ["search", "--space", "d_state,chunk_size", "--objective", "memory", "--seconds", "0.1",
          "--study-name", "mem", "--no-track"]


def trials_of(storage: Path) -> list[optuna.trial.FrozenTrial]:
    backend = make_storage(str(storage))
    return optuna.load_study(study_name="mem", storage=backend).trials


@pytest.mark.processes  # --workers 2: two spawned worker processes
def test_search_resumes_without_repeating(tmp_path: Path) -> None:
    storage = tmp_path / "studies.log"
    assert main([*SEARCH, "--trials", "4", "--workers", "2", "--storage", str(storage)]) == 0
    assert main([*SEARCH, "--trials", "4", "--workers", "2", "--storage", str(storage)]) == 0
    trials = trials_of(storage)
    assert len(trials) == 8
    points = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(set(points)) == 8
    assert all(t.state.name == "COMPLETE" and t.values[0] > 0 for t in trials)


def test_failed_trial_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(objective, cfg, settings, trial=None):
        if cfg.d_state == 4:
            raise TrialFailedError("out of memory: predicted 99 GiB")
        return (float(cfg.d_state),)

    monkeypatch.setattr(runner, "evaluate_config", fake)
    storage = tmp_path / "s.log"
    argv = ["search", "--space", "d_state", "--objective", "memory", "--study-name", "mem", "--trials", "6",
            "--storage", str(storage), "--no-track"]
    assert main(argv) == 0
    trials = trials_of(storage)
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(trials) == 6 and len(failed) == 1
    assert failed[0].user_attrs["fail_reason"].startswith("out of memory")


def test_space_is_validated_against_modelconfig() -> None:
    with pytest.raises(MbsbenchError, match="not a ModelConfig field"):
        Knob("dstate", choices=(1, 2))
    with pytest.raises(MbsbenchError, match="empty range"):
        Knob("d_state", low=8, high=8)
    with pytest.raises(MbsbenchError, match="is not a int"):
        Knob("d_state", choices=("big",))
    assert [k.name for k in parse_space("d_state,chunk_size")] == ["d_state", "chunk_size"]
    assert set(KNOBS) <= set(__import__("variants.config", fromlist=["x"]).field_types())


def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studies", *argv], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


@pytest.mark.processes  # each case a real `python -m studies` process: one line, no traceback
@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["search", "--space", "dstate", "--no-track"], "unknown knob 'dstate'; did you mean 'd_state'"),
        (["search", "--space", "d_state", "--choices", "d_state=", "--no-track"], "empty range"),
        (["search", "--space", "d_state", "--storage", "/nonexistent/dir/s.log", "--no-track"], "does not exist"),
        (["search", "--space", "d_state", "--storage", "postgresql://nobody@127.0.0.1:9/x", "--no-track"],
         "unreachable"),
        (["show", "nothing", "--storage", "{tmp}/s.log"], "no such storage"),  # and none is created
        (["search", "--space", "d_state", "--objective", "speed", "--no-track"], "--objective 'speed'"),
        (["create", "--space", "d_state", "--objective", "pesq", "--data", "foo:bar", "--no-track"],
         "unknown data spec 'foo:bar'"),  # it was accepted, and every trial failed on the workers
        (["search", "--space", "d_state", "--study-name", "", "--no-track"], "--study-name '': expected a non-empty"),
    ],
)
def test_studies_bad_input(tmp_path: Path, argv: list[str], fragment: str) -> None:
    proc = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in argv], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


def test_show_lists_best_and_importances(tmp_path: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "evaluate_config", lambda o, cfg, s, trial=None: (cfg.d_state * 10.0 + cfg.chunk_size,))

    storage = tmp_path / "s.log"
    assert main(["search", "--space", "d_state,chunk_size", "--study-name", "mem", "--trials", "6", "--storage",
                 str(storage), "--no-track"]) == 0
    capsys.readouterr()
    assert main(["show", "mem", "--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    assert "complete 6" in out and "best trial" in out and "importances: " in out
    assert main(["show", "nothing", "--storage", str(storage)]) == 2  # the storage is there, the study is not
    assert "no study 'nothing'" in capsys.readouterr().err


def test_tpe_samples_a_range_within_its_budget(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    storage = tmp_path / "s.log"
    argv = ["search", "--space", "d_state", "--range", "d_state=4:32", "--objective", "params", "--trials", "5",
            "--study-name", "mem", "--storage", str(storage), "--no-track", "-q"]
    assert main(argv) == 0
    trials = trials_of(storage)
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" and 4 <= t.params["d_state"] <= 32 for t in trials)
    study = optuna.load_study(study_name="mem", storage=make_storage(str(storage)))
    assert json.loads(study.user_attrs["mbsbench_spec"])["sampler"] == "tpe"
    assert main(argv) == 0 and len(trials_of(storage)) == 5  # the budget is the study's: nothing more to do
    capsys.readouterr()
    assert main([*argv[:11], "--sampler", "grid", "--storage", str(storage), "--no-track"]) == 2
    assert "is a range; a grid needs choices" in capsys.readouterr().err


def test_pesq_objective_trains_through_the_run_path(tmp_path: Path) -> None:
    """Issue 25: a pesq trial is a planned run trained by train_one: its folder holds the run path's result and the
    validation scores (never the test split's), and its pruner hears every validation."""
    from studies.objectives import validation_pesq
    from studies.spec import ObjectiveSettings
    from variants.registry import build_config

    study = optuna.create_study(study_name="q", direction="maximize")
    trial = study.ask()
    settings = ObjectiveSettings(data="synth:seed=5,train=8,val=4,test=4", steps=2, train_batch=2,
                                 workdir=str(tmp_path))
    value = validation_pesq(build_config("optimized", feature_dim=16, temporal_layers=1), settings, trial)
    folder = tmp_path / "q" / "trial-0-seed0"
    result = json.loads((folder / "result.json").read_text())
    assert 1 <= value <= 4.6 and result["pesq_wb"] == value and result["train_steps"] == 2
    assert (folder / "val" / "summary.csv").is_file() and not (folder / "test").exists()
    assert study.trials[0].intermediate_values  # the validation loss reported at each validation
