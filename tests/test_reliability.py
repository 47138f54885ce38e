"""Nothing silently changed, nothing lost: bad input, interrupts, kills and resumes through the real CLIs.

The battery runs each case as a user would (a subprocess: exit 2, one line on stderr, no traceback).
The process tests start real `bench run` processes and signal or SIGKILL them (marked `processes`).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.__main__ import main as bench

pytestmark = pytest.mark.processes

TINY_DATA = "synth:seed=5,train=8,val=4,test=4"
TINY = ["--set", "feature_dim=16", "--set", "temporal_layers=1"]
RUN = ["run", "--variant", "optimized", *TINY, "--data", TINY_DATA, "--batch", "2", "--crop-seconds", "0.5",
       "--workers", "1", "--device", "cpu"]


def cli(*argv: str, cwd: Path | None = None, env: dict | None = None, module: str = "bench",
        timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (2 steps, batch 2, crop 0.5 s, lr 1e-3) in OUT/optimized-seed0, not tracked."""
    out = tmp_path_factory.mktemp("trained")
    assert bench([*RUN, "--steps", "2", "--out", str(out), "--no-track", "-q"]) == 0
    return out


# (class, argv, fragment of the one stderr line); {run} is the trained run's --out, {tmp} a fresh folder
BATTERY = [
    # 1. out-of-range values are errors naming the flag, the value and the range, never replaced by defaults
    *[("range", ["run", "--variant", "optimized", flag, value], f"{flag} {value}: expected")
      for flag, value in [("--batch", "0"), ("--batch", "-3"), ("--crop-seconds", "0"), ("--crop-seconds", "-1"),
                          ("--steps", "-5"), ("--steps", "0"), ("--epochs", "-1"), ("--epochs", "0"),
                          ("--minutes", "0"), ("--minutes", "-2"), ("--minutes", "nan"), ("--lr", "0"),
                          ("--lr", "-1"), ("--lr", "inf"), ("--workers", "-1"), ("--seeds", "-1"), ("--seeds", "a"),
                          ("--val-every", "0"), ("--checkpoint-every", "-1"), ("--batch", "2.5")]],
    *[("range", ["profile", "--variant", "optimized", flag, value], f"{flag} {value}: expected")
      for flag, value in [("--batch", "0"), ("--seconds", "0"), ("--seconds", "0.01"), ("--repeats", "0"),
                          ("--budget-gb", "0"), ("--budget-gb", "-12"), ("--lengths", "0,1"), ("--chunks", "0"),
                          ("--top-ops", "0")]],
    ("range", ["profile", "--variant", "optimized", "--dtype", "fp8"], "--dtype 'fp8': expected one of"),
    *[("range", ["scan", flag, value], f"{flag} {value}: expected")
      for flag, value in [("--frames", "0"), ("--chunk", "0"), ("--repeats", "0"), ("--batch", "0")]],
    ("range", ["params", "--variant", "optimized", "--depth", "0"], "--depth 0: expected"),
    ("range", ["evaluate", "--noisy", "--workers", "-2"], "--workers -2: expected"),
    *[("range", ["params", "--variant", "optimized", "--set", item], fragment)
      for item, fragment in [("feature_dim=0", "feature_dim=0 must be a positive integer"),
                             ("d_state=-1", "d_state=-1 must be a positive integer"),
                             ("chunk_size=0", "chunk_size=0 must be a positive integer"),
                             ("dt_rank=-1", "dt_rank=-1 must be >= 0"), ("hop=0", "hop=0 must be"),
                             ("band_widths=2,3", "band_widths sum to 5"), ("scan=fast", "scan='fast' is not one of"),
                             ("expand=1.5", "expected an integer")]],
    *[("range", ["search", "--space", "d_state", flag, value], f"{flag} {value}: expected")
      for flag, value in [("--trials", "0"), ("--workers", "0"), ("--steps", "0"), ("--batch", "0"),
                          ("--seconds", "0"), ("--seed", "-1"), ("--minutes", "0")]],
    ("range", ["run", "--variant", "optimized", "--data", "synth:train=0", "--no-track"], "synth:train=0: expected"),
    # 2. what used to end in a traceback
    ("traceback", [*RUN, "--resume", "--out", "{garbage}", "--no-track"], "not a readable mbsbench checkpoint"),
    ("traceback", [*RUN, "--resume", "--out", "{truncated}", "--no-track"], "not a readable mbsbench checkpoint"),
    ("traceback", ["profile", "--variant", "optimized", "--tracking-uri", "{tmp}/store"], "MLflow's file store"),
    ("traceback", ["profile", "--variant", "optimized", "--tracking-uri", "file://{tmp}/store"], "a folder"),
    ("traceback", ["profile", "--variant", "optimized", "--tracking-uri", "ftp://x/y"], "unknown scheme 'ftp'"),
    ("traceback", ["evaluate", "--variant", "optimized", "--checkpoint", "{garbage}/optimized-seed0/last.pt",
                   "--no-track"], "not a readable mbsbench checkpoint"),
    ("traceback", ["evaluate", "--variant", "optimized", "--checkpoint", "{truncated}/optimized-seed0/last.pt",
                   "--no-track"], "not a readable mbsbench checkpoint"),
    ("traceback", ["tables", "--tracking-uri", "{tmp}/store"], "MLflow's file store"),
    # 3. work that would have been lost after it was done
    ("lost", [*RUN, "--steps", "1", "--out", "{run}", "--no-track"], "holds a run already"),
    ("lost", [*RUN, "--steps", "1", "--out", "{file}/runs", "--no-track"], "not writable"),
    ("lost", [*RUN, "--steps", "1", "--out", "{run}", "--resume", "--overwrite", "--no-track"], "contradict"),
    ("lost", [*RUN, "--steps", "1", "--tracking-uri", "sqlite:////nonexistent/dir/m.db"], "does not exist"),
    ("lost", ["evaluate", "--noisy", "--tracking-uri", "sqlite:////nonexistent/dir/m.db"], "does not exist"),
    ("lost", ["profile", "--variant", "optimized", "--tracking-uri", "sqlite:////nonexistent/dir/m.db"],
     "does not exist"),
    # 5. a resume that would not be exact
    *[("resume", [*RUN, *change, "--steps", "4", "--out", "{run}", "--resume", "--no-track"], fragment)
      for change, fragment in [(["--batch", "3"], "batch=2 (here 3)"), (["--lr", "0.01"], "lr=0.001 (here 0.01)"),
                               (["--crop-seconds", "0.6"], "crop_seconds=0.5 (here 0.6)"),
                               (["--precision", "fp64"], "precision='fp32' (here 'fp64')"),
                               (["--set", "d_state=8"], "d_state=12 (here 8)")]],
    ("resume", [*RUN, "--steps", "4", "--out", "{run}", "--resume", "--no-track", "--data",
                "synth:seed=6,train=8,val=4,test=4"], "data fingerprint"),
]


def fill(argv: list[str], trained: Path, tmp: Path) -> list[str]:
    if any("{garbage}" in a or "{truncated}" in a for a in argv):
        for name, damage in (("garbage", lambda b: b"not a checkpoint"), ("truncated", lambda b: b[: len(b) // 2])):
            folder = tmp / name / "optimized-seed0"
            shutil.copytree(trained / "optimized-seed0", folder)
            (folder / "last.pt").write_bytes(damage((folder / "last.pt").read_bytes()))
    (tmp / "afile").write_text("a file, not a folder")
    places = {"{run}": str(trained), "{tmp}": str(tmp), "{garbage}": str(tmp / "garbage"),
              "{truncated}": str(tmp / "truncated"), "{file}": str(tmp / "afile")}
    out = []
    for arg in argv:
        for key, value in places.items():
            arg = arg.replace(key, value)
        out.append(arg)
    return out


@pytest.mark.parametrize("kind,argv,fragment", BATTERY, ids=[f"{c[0]}-{i}" for i, c in enumerate(BATTERY)])
def test_bad_input_is_one_line(kind: str, argv: list[str], fragment: str, trained: Path, tmp_path: Path) -> None:
    module = {"search": "studies", "tables": "reports"}.get(argv[0], "bench")
    before = sorted(p.name for p in trained.rglob("*"))
    proc = cli(*fill(argv, trained, tmp_path), cwd=tmp_path, module=module)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr
    assert sorted(p.name for p in trained.rglob("*")) == before  # nothing of the earlier run touched


def test_battery_covers_every_class() -> None:
    counts = {kind: sum(1 for k, _, _ in BATTERY if k == kind) for kind in ("range", "traceback", "lost", "resume")}
    assert min(counts.values()) >= 6 and sum(counts.values()) >= 72


def run_store(uri: str):
    from bench.tracking.store import runs_table

    return runs_table(uri, "mbsbench-run")


def start(argv: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *argv], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for_checkpoint(proc: subprocess.Popen, path: Path, step: int, timeout: float = 240) -> None:
    """Until last.pt holds at least `step` (the process still running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.is_file():
            try:
                if torch.load(path, weights_only=False)["step"] >= step:
                    return
            except Exception:  # being replaced right now (atomic rename: retry)
                pass
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint at step {step} in {timeout} s")


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "last.pt", weights_only=False)["state_dict"]


@pytest.mark.processes
def test_sigkill_then_resume_is_the_same_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [*RUN, "--steps", "40", "--val-every", "10", "--checkpoint-every", "10", "-q", "--tracking-uri", uri]
    assert bench([*common, "--out", str(tmp_path / "straight")]) == 0
    killed = start([*common, "--out", str(tmp_path / "killed")], tmp_path)
    last = tmp_path / "killed" / "optimized-seed0" / "last.pt"
    wait_for_checkpoint(killed, last, 10)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    first_segment = torch.load(last, weights_only=False)["result"]["seconds"]
    assert bench([*common, "--out", str(tmp_path / "killed"), "--resume"]) == 0
    straight, resumed = final_weights(tmp_path / "straight" / "optimized-seed0"), final_weights(last.parent)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)  # bit-identical
    runs = run_store(uri)
    mine = runs[runs["run_id"] == json.loads((last.parent / "result.json").read_text())["run_id"]].iloc[0]
    assert len(runs) == 2 and mine["run_status"] == "FINISHED"  # the straight run and this one, not three
    assert "ended without closing" in mine["mbsbench.orphaned"]  # marked KILLED by the resume, reopened
    assert mine["train_segments"] == 2
    result = torch.load(last, weights_only=False)["result"]
    assert result["seconds"] == pytest.approx(sum(result["segments"])) and result["segments"][0] == first_segment
    assert mine["train_minutes"] == pytest.approx(result["seconds"] / 60)


@pytest.mark.processes
def test_minutes_budget_counts_time_already_spent(tmp_path: Path) -> None:
    common = [*RUN, "--minutes", "0.12", "--val-every", "30", "--checkpoint-every", "10", "-q", "--no-track"]
    # every segment a fresh one-thread process: steps per minute then depend on the budget logic, not on
    # the state the test session left in this process or on how two threads were scheduled
    one_thread = os.environ | {"OMP_NUM_THREADS": "1"}
    straight = cli(*common, "--out", str(tmp_path / "straight"), cwd=tmp_path, env=one_thread)
    assert straight.returncode == 0, straight.stderr
    killed = start([*common, "--out", str(tmp_path / "killed")], tmp_path, one_thread)
    last = tmp_path / "killed" / "optimized-seed0" / "last.pt"
    wait_for_checkpoint(killed, last, 10)
    time.sleep(2)  # time after the checkpoint is lost with the process: it must not count
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    resumed = cli(*common, "--out", str(tmp_path / "killed"), "--resume", cwd=tmp_path, env=one_thread)
    assert resumed.returncode == 0, resumed.stderr
    steps = [json.loads((tmp_path / name / "optimized-seed0" / "result.json").read_text())["train_steps"]
             for name in ("straight", "killed")]
    assert steps[0] > 30 and abs(steps[0] - steps[1]) <= 30, steps  # within one validation interval


@pytest.mark.processes
def test_sigint_keeps_the_checkpoint_and_kills_the_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = start([*RUN, "--steps", "100000", "--val-every", "5", "--checkpoint-every", "5", "--out",
                  str(tmp_path / "out"), "--tracking-uri", uri], tmp_path)
    last = tmp_path / "out" / "optimized-seed0" / "last.pt"
    wait_for_checkpoint(proc, last, 5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    line = stderr.strip().splitlines()[-1]
    step = torch.load(last, weights_only=False)["step"]
    assert line.startswith("interrupted: ") and f"at step {step}" in line and "KILLED" in line
    run = run_store(uri).iloc[0]
    assert run["run_status"] == "KILLED" and "interrupted" in run["end_reason"]
    from bench.tracking.store import metric_history

    assert [s for s, _ in metric_history(uri, run["run_id"], "train_loss")] == list(range(1, step + 1))
    assert [s for s, _ in metric_history(uri, run["run_id"], "val_loss")][-1] >= step - 5
    resumed = cli(*RUN, "--steps", str(step + 1), "--val-every", "5", "--checkpoint-every", "5", "--out",
                  str(tmp_path / "out"), "--tracking-uri", uri, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    run = run_store(uri).iloc[0]  # the same run, finished: it no longer says it was interrupted
    assert run["run_status"] == "FINISHED" and "interrupted" in run["previous_end_reason"]
    assert "end_reason" not in run or not isinstance(run["end_reason"], str)


def test_silent_output_is_a_failure_at_the_worst_value(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bench.tracking.schema import WORST
    from bench.training.checkpoint import save_checkpoint, weights
    from variants.registry import build, build_config

    cfg = build_config("optimized", feature_dim=16, temporal_layers=1)
    model = build("optimized", feature_dim=16, temporal_layers=1)
    with torch.no_grad():
        for out in model.decoder.heads.outs:  # a zero mask: the enhanced output is exact digital silence
            out.weight.zero_()
            out.bias.zero_()
    save_checkpoint(tmp_path / "silent.pt", weights(model, cfg, "optimized"))
    assert bench(["evaluate", "--data", TINY_DATA, "--variant", "optimized", *TINY, "--checkpoint",
                  str(tmp_path / "silent.pt"), "--workers", "1", "--no-track", "--out", str(tmp_path / "eval"),
                  "--format", "json", "--device", "cpu"]) == 0
    summary = {row["metric"]: row for row in json.loads(capsys.readouterr().out)}
    for metric in ("pesq_wb", "stoi", "si_sdr", "csig"):
        assert summary[metric]["n_failed"] == summary[metric]["n_scored"] == 4
        assert summary[metric]["mean"] == pytest.approx(WORST[metric])  # finite, and the worst
    assert "digital silence" in (tmp_path / "eval" / "per_utterance.csv").read_text()


@pytest.mark.processes
def test_no_writes_outside_and_no_network(tmp_path: Path) -> None:
    """A tracked `bench run` writes only to its working folder, --out and the cache, and looks up no host."""
    home, work, out = (tmp_path / name for name in ("home", "work", "out"))
    cache = Path(os.environ["MBSBENCH_CACHE"])  # the session's: it may hold the corpus already
    for folder in (home, work, work / "tmp"):
        folder.mkdir(parents=True)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import socket, os\n"
        "log = os.environ['LOOKUP_LOG']\n"
        "def record(name):\n"
        "    def wrapped(host, *a, **k):\n"
        "        open(log, 'a').write(f'{name} {host}\\n')\n"
        "        return real[name](host, *a, **k)\n"
        "    return wrapped\n"
        "real = {n: getattr(socket, n) for n in ('getaddrinfo', 'gethostbyname', 'gethostbyname_ex')}\n"
        "for n in real: setattr(socket, n, record(n))\n")
    skip = ("MLFLOW_", "DO_NOT_TRACK", "PYTEST", "CI", "GITHUB_", "TMP", "HOME", "XDG_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env |= {"HOME": str(home), "TMPDIR": str(work / "tmp"), "MBSBENCH_CACHE": str(cache), "PYTHONPATH": str(hooks),
            "LOOKUP_LOG": str(tmp_path / "lookups.txt")}
    proc = cli(*RUN, "--steps", "2", "--out", str(out), "--tracking-uri", f"sqlite:///{work}/mlflow.db", "-q",
               cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr
    assert list(home.rglob("*")) == []  # no ~/.config/mlflow, no ~/.cache of any library
    assert not (tmp_path / "lookups.txt").exists(), (tmp_path / "lookups.txt").read_text()
    assert {p.name for p in out.rglob("*.pt")} == {"best.pt", "last.pt"}
    assert {p.name for p in work.iterdir()} == {"mlflow.db", "mlflow.db.lock", "mlruns", "tmp"}  # mlruns: artifacts


def test_a_store_failing_after_the_work_keeps_the_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    """Class 3: the profile and the training are not lost when MLflow fails at the end; the error says where."""
    from mlflow.exceptions import MlflowException

    import bench.tracking.records as records
    import bench.tracking.store as store

    def broken(*args, **kwargs):
        raise MlflowException("the database went away")

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(records, "record_profile", broken)
    assert bench(["profile", "--variant", "optimized", *TINY, "--batch", "1", "--seconds", "0.1", "--repeats", "1",
                  "--no-rss", "--tracking-uri", uri, "--device", "cpu"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    kept = Path(line.rsplit("every row is in ", 1)[1])
    assert "the database went away" in line and json.loads(kept.read_text())[0]["params"] > 0
    monkeypatch.setattr(store.Run, "log_points", broken)  # the store fails while the run trains
    assert bench([*RUN, "--steps", "3", "--val-every", "1", "--out", str(tmp_path / "out"), "--tracking-uri",
                  uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: MLflow logging of optimized seed 0 failed") and "result.json" in err[-1]
    assert json.loads((tmp_path / "out" / "optimized-seed0" / "result.json").read_text())["train_steps"] == 3
    assert (tmp_path / "out" / "optimized-seed0" / "test" / "per_utterance.csv").is_file()


def test_metrics_warns_when_it_cuts(tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    sf.write(tmp_path / "a.wav", rng.standard_normal(16000) * 0.1, 16000)
    sf.write(tmp_path / "b.wav", rng.standard_normal(12000) * 0.1, 16000)
    proc = cli("metrics", "--clean", str(tmp_path / "a.wav"), "--enhanced", str(tmp_path / "b.wav"), "-q")
    assert proc.returncode == 0 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("warning: ") and "16000 samples" in proc.stderr and "first 12000" in proc.stderr


def test_caught_errors_are_reported_in_one_line_even_without_a_message() -> None:
    from variants.errors import error_line, first_line

    assert error_line(RuntimeError("out of memory\nTried to allocate 2 GiB"), 6) == "RuntimeError: out of"
    assert first_line(OSError("\n  disk full \nmore")) == "disk full"
    assert error_line(KeyError()) == first_line(KeyError()) == "KeyError"  # str(err).splitlines()[0] raised here


def test_two_runs_never_share_a_run_folder(tmp_path: Path) -> None:
    """Issue 24, item 3: the second run into a folder in use lost one run's work (or crashed on the shared
    last.pt.tmp); it is refused with one line naming the holder, and a SIGKILLed holder leaves no stale lock."""
    common = [*RUN, "--steps", "400", "--checkpoint-every", "2", "--no-track", "-q", "--out", str(tmp_path / "out")]
    holder = start(common, tmp_path)
    wait_for_checkpoint(holder, tmp_path / "out" / "optimized-seed0" / "last.pt", 2)
    second = cli(*common, "--overwrite", cwd=tmp_path)
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert f"optimized-seed0 is in use by pid {holder.pid} on " in second.stderr
    assert "python -m bench run --variant optimized" in second.stderr  # what the holder is doing
    assert holder.poll() is None  # untouched
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert not list((tmp_path / "out" / "optimized-seed0").glob("*.tmp"))  # temp names are the process's own
    assert bench([*RUN, "--steps", "2", "--no-track", "-q", "--out", str(tmp_path / "out"), "--overwrite"]) == 0


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 1 MiB tmpfs filled up but for `free` bytes (root can mount one; elsewhere the test is skipped)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()[:80]})")

    def fill(free: int) -> None:
        stats = os.statvfs(mount)
        (mount / "filler").write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - free))

    try:
        yield mount, fill
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_the_last_checkpoint_stays(full_disk, tmp_path: Path) -> None:
    """Issue 24, item 9: a 47-line traceback from torch.save that never said 'disk full', a partial temp file
    holding the space."""
    from bench.training.checkpoint import write_atomically
    from variants.errors import MbsbenchError

    mount, fill = full_disk
    write_atomically(mount / "last.pt", b"old" * 1000)
    fill(8192)
    with pytest.raises(MbsbenchError, match=r"disk full: no space left in .* to write last\.pt .*previous last\.pt"):
        write_atomically(mount / "last.pt", b"new" * 100_000)
    assert (mount / "last.pt").read_bytes() == b"old" * 1000 and not list(mount.glob("*.tmp"))
    run = cli(*RUN, "--steps", "2", "--no-track", "-q", "--out", str(mount / "runs"), cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "disk full" in run.stderr, run.stderr
    assert not list(mount.rglob("*.tmp"))
