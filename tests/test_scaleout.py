"""Many machines, one study: real PostgreSQL, real `mlflow server`, real worker processes killed.

Workers here are `python -m studies work` processes on this machine; to the database they are as
remote as workers on other machines (each has its own process, connection and heartbeat).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from bench.__main__ import main as bench
from reports.__main__ import main as reports

pytestmark = pytest.mark.servers

FAST = ["--heartbeat", "1", "--grace", "3"]
TINY = ["--set", "feature_dim=16", "--set", "temporal_layers=1"]


def studies(*argv: str, cwd: Path) -> subprocess.Popen:
    """A studies command in a process group of its own (a Ctrl-C in its terminal reaches the whole group)."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # two workers on two cores: one thread each
    return subprocess.Popen([sys.executable, "-m", "studies", *argv], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out, err


def trials_of(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    from studies.storage import make_storage

    return optuna.load_study(study_name=name, storage=make_storage(url)).trials


GRID = ["--space", "d_state", "--choices", "d_state=4,8,12,16,24,32", "--objective", "time", "--study-name", "grid"]
QUICK = ["--seconds", "0.1", "--batch", "1"]  # a trial of about half a second
SLOW = ["--seconds", "0.5", "--batch", "2"]  # a trial of a second or two: long enough to be killed in


def create(url: str, tmp: Path, *extra: str) -> subprocess.Popen:
    return studies("create", *GRID, "--storage", url, *FAST, "--no-track", *extra, cwd=tmp)


def completed_points(trials) -> list[int]:
    return sorted(t.params["d_state"] for t in trials if t.state.name == "COMPLETE")


def test_two_machines_create_once_and_two_workers_drain_the_grid(postgres, tmp_path: Path) -> None:
    url = postgres.database()
    first, second = create(url, tmp_path, *QUICK), create(url, tmp_path, *QUICK)  # at once, as from two machines
    outs = [finish(first)[0], finish(second)[0]]
    assert sorted(int(o.split(": ")[1].split()[0]) for o in outs) == [0, 6]  # one queued all six, the other none
    workers = [studies("work", "grid", "--storage", url, *FAST, "--device", "cpu", cwd=tmp_path) for _ in range(2)]
    ran = [int(finish(w)[0].split("ran ")[1].split()[0]) for w in workers]
    trials = trials_of(url, "grid")
    assert completed_points(trials) == [4, 8, 12, 16, 24, 32] and len(trials) == 6, ran  # each point once, exactly
    assert sum(ran) == 6


def wait_running(url: str, name: str, timeout: float = 120) -> optuna.trial.FrozenTrial:
    """The first trial inside its objective (RUNNING with its point suggested, not merely started), seen within
    one query of its start: the storage is opened once (opening it takes longer than a quick trial)."""
    from studies.storage import make_storage

    storage, deadline = make_storage(url), time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:  # the study is not created yet
            time.sleep(0.1)
            continue
        while time.monotonic() < deadline:
            running = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING" and t.params]
            if running:
                return running[0]
            time.sleep(0.02)
    raise AssertionError("no trial started")


def test_a_killed_worker_is_retried_after_its_grace(postgres, tmp_path: Path) -> None:
    url = postgres.database()
    finish(create(url, tmp_path, *SLOW))
    doomed = studies("work", "grid", "--storage", url, *FAST, "--device", "cpu", cwd=tmp_path)
    victim = wait_running(url, "grid")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    killed_at = time.monotonic()
    survivor = studies("work", "grid", "--storage", url, *FAST, "--device", "cpu", cwd=tmp_path)
    finish(survivor)
    trials = trials_of(url, "grid")
    lost = trials[victim.number]
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert lost.state.name == "FAIL" and retry.state.name == "COMPLETE"
    assert retry.params == lost.params == lost.system_attrs["fixed_params"]
    assert retry.datetime_start.timestamp() > lost.datetime_start.timestamp() + 3
    assert completed_points(trials) == [4, 8, 12, 16, 24, 32]  # no point lost, none twice
    assert time.monotonic() - killed_at > 3  # the retry waited for the grace period


def test_ctrl_c_marks_the_trial_interrupted_and_it_is_retried(postgres, tmp_path: Path) -> None:
    url = postgres.database()
    search = studies("search", *GRID, *SLOW, "--storage", url, *FAST, "--no-track", "--workers", "2", "--device",
                     "cpu", cwd=tmp_path)
    wait_running(url, "grid")
    os.killpg(search.pid, signal.SIGINT)  # Ctrl-C: the parent and its workers
    _, err = search.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert search.returncode == 130 and "Traceback" not in err and len(lines) == 1, err
    trials = trials_of(url, "grid")
    seen = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    interrupted = [t for t in trials if t.user_attrs.get("fail_reason") == "interrupted"]
    assert interrupted and all(t.state.name == "FAIL" for t in interrupted), (err, seen)
    numbers = ", ".join(str(t.number) for t in interrupted)
    assert lines[0].startswith("interrupted: trial") and f"{numbers} marked interrupted and queued again" in lines[0]
    assert all(any(r.system_attrs.get("failed_trial") == t.number for r in trials) for t in interrupted)
    finish(studies("work", "grid", "--storage", url, *FAST, "--device", "cpu", cwd=tmp_path))
    assert completed_points(trials_of(url, "grid")) == [4, 8, 12, 16, 24, 32]


def test_killing_the_parent_takes_the_workers(postgres, tmp_path: Path) -> None:
    url = postgres.database()
    search = studies("search", *GRID, *SLOW, "--storage", url, *FAST, "--no-track", "--workers", "2", "--device",
                     "cpu", cwd=tmp_path)
    wait_running(url, "grid")
    children = subprocess.run(["pgrep", "-P", str(search.pid)], capture_output=True, text=True).stdout.split()
    search.send_signal(signal.SIGKILL)
    search.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in children):
        time.sleep(0.2)
    alive = [pid for pid in children if Path(f"/proc/{pid}/status").exists() and
             "zombie" not in Path(f"/proc/{pid}/status").read_text()]
    assert children and alive == []


def test_queued_ablation_on_postgres_tracking(postgres, tmp_path: Path) -> None:
    """bench ablate --profile-only --queue, drained by two workers: one MLflow run per (variant, seed), once."""
    queue, tracking = postgres.database(), postgres.database()
    argv = ["ablate", "--base", "optimized", "--changes", "d_state12,expand1", "--profile-only", *TINY, "--batch",
            "1", "--crop-seconds", "0.1", "--seeds", "0,1", "--queue", queue, "--tracking-uri", tracking]
    assert bench(argv) == 0
    assert bench(argv) == 0  # queued twice: nothing queued the second time
    for _ in range(2):  # two drains: the second finds nothing to do
        workers = [studies("work", "ablate-optimized-profile", "--storage", queue, *FAST, "--device", "cpu",
                           cwd=tmp_path) for _ in range(2)]
        for worker in workers:
            finish(worker)
    from bench.tracking.store import runs_table

    runs = runs_table(tracking, "mbsbench-profile")
    pairs = sorted(zip(runs["variant"], runs["seed"]))
    assert pairs == sorted((v, s) for v in ("optimized", "optimized-d_state12", "optimized-expand1") for s in "01")
    assert (runs["run_status"] == "FINISHED").all()
    # each run made by a worker carries the command that reproduces it here: the ablation, without its queue
    assert set(runs["command"]) == {"python -m bench " + " ".join(argv[:-4])}
    trials = trials_of(queue, "ablate-optimized-profile")
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)


def test_mlflow_server_on_postgres(postgres, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A real `mlflow server`: bench profile logs through it, reports read the figures back, artifacts download;
    stdout holds the results only (MLflow printed 'View run ... at:' lines there)."""
    from servers import MlflowServer

    from bench.tracking.store import download_artifact, runs_table

    server = MlflowServer(postgres.database(), tmp_path / "artifacts", tmp_path / "server.log")
    try:
        assert bench(["profile", "--variant", "optimized", *TINY, "--batch", "1", "--seconds", "0.1", "--repeats",
                      "1", "--no-rss", "--tracking-uri", server.url, "--format", "json", "--device", "cpu"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["variant"] == "optimized"
        run = runs_table(server.url, "mbsbench-profile").iloc[0]
        assert reports(["tables", "--tracking-uri", server.url, "--out", str(tmp_path / "paper")]) == 0
        main = (tmp_path / "paper" / "main.md").read_text()
        assert f"| {run['params_m']:.3f} |" in main
        profile = json.loads(download_artifact(server.url, run["run_id"], "profile.json", str(tmp_path)).read_text())
        assert profile["params"] == run["params"]
        assert any((tmp_path / "artifacts").rglob("profile.json"))  # stored by the server, not by us
    finally:
        server.stop()


def test_tracking_databases_are_checked_for_real(postgres) -> None:
    from bench.tracking.store import check_reachable
    from variants.errors import MbsbenchError

    check_reachable(postgres.database())  # a live database passes
    with pytest.raises(MbsbenchError, match="unreachable"):
        check_reachable(f"postgresql://postgres@127.0.0.1:{postgres.port}/no_such_db")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads


def wait_idle(pid: int, timeout: float = 120) -> None:
    """Until the process has used under 5% of a core for a second: a CPU-bound trial is over and it waits.
    (A fixed outage raced the trial: one that outlasted it saw no outage at all and rightly exited 0.)"""
    deadline = time.monotonic() + timeout
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(1)
        now = cpu_seconds(pid)
        if now - before < 0.05:
            return
        before = now
    raise AssertionError(f"process {pid} still busy after {timeout} s")


def test_a_storage_outage_is_one_line_and_the_trial_comes_back(tmp_path: Path) -> None:
    """Issue 24, item 10: every worker died with ~290 lines ending in Optuna's 'invalid data in the commit, e.g.
    exceeding max length'. One line naming the storage, 'unreachable'; the trial carries the reason."""
    from servers import PostgresServer

    server = PostgresServer()  # its own: this test takes it down
    try:
        url = server.database()
        finish(create(url, tmp_path, *SLOW))
        worker = studies("work", "grid", "--storage", url, *FAST, "--device", "cpu", cwd=tmp_path)
        wait_running(url, "grid")
        server.halt()
        wait_idle(worker.pid)  # the objective is done and its tell failed: the worker waits for the storage
        server.start()  # back within the worker's wait: it writes the trial's reason before it stops
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and f"--storage {url}: unreachable (" in lines[0], err
        assert "failed with that reason and queued again" in lines[0] and "max length" not in lines[0]
        finish(studies("work", "grid", "--storage", url, *FAST, "--device", "cpu", cwd=tmp_path))
        trials = trials_of(url, "grid")
        assert completed_points(trials) == [4, 8, 12, 16, 24, 32]
        failed = [t for t in trials if t.state.name == "FAIL"]
        assert len(failed) == 1 and "storage unreachable" in failed[0].user_attrs["fail_reason"]
    finally:
        server.stop()
