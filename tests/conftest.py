"""Shared fixtures: deterministic seeds and a small waveform."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def half_second() -> torch.Tensor:
    """0.5 s of noise at 16 kHz, batch 1."""
    return torch.randn(1, 8000) * 0.1
