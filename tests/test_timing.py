"""Timings say what they were measured under: torch's threads (the cores this process may use, or --threads) and
other processes' CPU use while timing; a row timed beside a busy process is marked, or refused when strict."""

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from bench.devices import cgroup_cpu_quota, usable_cores, use_threads
from bench.profiling.contention import CpuWindow
from bench.profiling.instruments import time_call
from bench.profiling.profile import profile_variant
from bench.profiling.workload import ProfileSettings
from variants.registry import build_config


@contextmanager
def busy_process(seconds: float = 60.0) -> Iterator[None]:
    """A CPU-bound process beside the test (a pure-Python loop that ends by itself), stopped after the block."""
    proc = subprocess.Popen([sys.executable, "-c", f"import time\nend = time.time() + {seconds}\n"
                                                   "while time.time() < end: pass"])
    time.sleep(0.3)  # running before the timing starts
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_timing_beside_a_busy_process_is_contended() -> None:
    with busy_process():
        timing = time_call(lambda: spin(0.15), repeats=3, warmup=0)
    assert timing["other_cores"] >= 0.5 and timing["contended"]


def test_the_window_counts_this_process_as_its_own() -> None:
    with CpuWindow() as window:
        spin(0.4)
    assert window.own_cores > 0.8 and window.wall_s >= 0.4
    with CpuWindow() as short:
        spin(0.05)
    assert short.other_cores is None and not short.contended  # 10 ms ticks cannot judge 50 ms


def small_profile(strict: bool) -> dict:
    cfg = build_config("optimized", feature_dim=16, temporal_layers=1)
    settings = ProfileSettings(batch=4, seconds=1.0, repeats=12, rss=False, strict_timing=strict)
    return profile_variant("optimized", cfg, settings)


@pytest.mark.processes  # a busy process beside the timing
def test_a_profile_row_timed_beside_a_busy_process_is_marked_and_strict_refuses_it() -> None:
    """The acceptance: a row measured under contention is marked (never a silent number); --strict-timing
    refuses its times."""
    with busy_process():
        marked = small_profile(strict=False)
        refused = small_profile(strict=True)
    assert marked["timing_contended"] and marked["timing"].startswith("busy ") and marked["status"] == "ok"
    assert marked["train_step_s"] > 0
    assert refused["status"] == "refused" and "cores" in refused["reason"]
    assert refused["train_step_s"] is None and refused["rtf_infer"] is None and refused["params"] > 0


def test_usable_cores_follow_the_affinity_and_the_container_quota(tmp_path: Path) -> None:
    code = "import os; os.sched_setaffinity(0, {0}); from bench.devices import usable_cores; print(usable_cores())"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout == "1\n"
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5 and usable_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None and usable_cores(tmp_path) >= 1


def test_threads_default_respects_the_user_and_shares_cores_between_ranks(monkeypatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert use_threads(None) == 1 == torch.get_num_threads()  # a value the user set is never replaced
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert use_threads(None) == max(1, usable_cores() // 2)  # a torchrun rank shares the cores
        assert use_threads(3) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_threads_flag_sets_torch_threads_and_the_row_says_so(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    argv = [sys.executable, "-m", "bench", "profile", "--variant", "optimized", "--set", "feature_dim=16", "--batch",
            "1", "--seconds", "0.1", "--repeats", "1", "--no-rss", "--no-track", "--device", "cpu", "--threads", "1",
            "--format", "json"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)[0]
    assert row["threads"] == 1 and "(1 threads)" in row["device"] and "timing" in row
    assert torch.get_num_threads() == before  # the flag acted in the command's process


@pytest.mark.processes
def test_strict_timing_exits_2_with_the_rows_on_stdout(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench", "profile", "--variant", "optimized", "--set", "feature_dim=16", "--set",
            "temporal_layers=1", "--batch", "4", "--seconds", "1", "--repeats", "12", "--no-rss", "--no-track",
            "--device", "cpu", "--strict-timing"]
    with busy_process():
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and "refused" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --strict-timing refused the times of optimized")


@pytest.mark.processes
def test_bench_scan_says_what_it_measures_and_an_interrupt_keeps_the_rows(tmp_path: Path) -> None:
    """`bench scan` was silent for 10 minutes, and Ctrl-C lost every row: a line per shape and scan, and the rows
    done are printed when it is interrupted."""
    import signal

    argv = [sys.executable, "-m", "bench", "scan", "--frames", "60", "--scans", "naive,chunked_ckpt", "--repeats",
            "2", "--no-track", "--device", "cpu"]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("[3/6]"):  # two rows done
            proc.send_signal(signal.SIGINT)
            break
    out, rest = proc.communicate(timeout=120)
    err = "".join(seen) + rest
    assert seen[0].startswith("original time (b 31, l 60, d 256, n 16): the float64 reference")
    assert "[1/6] original time (b 31, l 60, d 256, n 16): naive ..." in err
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted: ") and "rows measured, printed above" in err
    table = [line.split()[2] for line in out.splitlines() if line.startswith("original time")]
    assert table[:2] == ["naive", "chunked_ckpt"]
