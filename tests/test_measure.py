"""Calibrate the instruments against known sleeps and allocations."""

import time

import pytest
import torch

from bench.profiling.instruments import LiveTensorPeak, SavedTensorBytes, time_call


def test_timer_measures_a_known_sleep() -> None:
    result = time_call(lambda: time.sleep(0.05), repeats=3, warmup=1)
    assert result["median_s"] == pytest.approx(0.05, abs=0.02)
    assert result["min_s"] <= result["median_s"] <= result["max_s"]


def test_live_peak_sees_a_known_allocation() -> None:
    with LiveTensorPeak() as live:
        big = torch.empty(1024, 1024)  # 4 MiB
        del big
        small = torch.empty(256, 1024)  # 1 MiB
    assert live.peak_bytes == pytest.approx(4 * 2**20, rel=0.1)
    assert live.current_bytes == pytest.approx(2**20, rel=0.1)
    del small


def test_live_peak_counts_a_view_once_and_the_baseline() -> None:
    weight = torch.zeros(1000)
    with LiveTensorPeak(baseline=[weight]) as live:
        x = torch.ones(1000)
        view = x[10:]
        _ = view + 1
    assert live.peak_bytes == 4000 + 4000 + 990 * 4  # weight, x (its view adds nothing), view + 1


def test_live_peak_covers_backward() -> None:
    w = torch.randn(512, 512, requires_grad=True)
    with LiveTensorPeak() as live:
        (torch.randn(4, 512) @ w).sum().backward()
    assert live.peak_bytes >= 512 * 512 * 4  # the gradient of w is allocated in backward


def test_saved_bytes_of_a_known_graph() -> None:
    x = torch.randn(1000, requires_grad=True)
    with SavedTensorBytes() as saved:
        y = (x * x).sum()  # mul saves x twice: one storage
    assert saved.total_bytes == 4000
    y.backward()
