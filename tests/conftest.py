"""Shared fixtures: deterministic seeds, a small waveform, and a cache folder of the test session's own."""

import os
from pathlib import Path

import pytest
import torch

# Triton's interpreter runs the Triton scan on CPU tensors; triton decorates its own library functions when
# it is imported, so the choice is made here, before any test imports it (a CUDA machine runs it compiled)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="session")
def _cache_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    # nothing a test runs writes to the user's ~/.cache/mbsbench; subprocesses inherit the variable
    os.environ.setdefault("MBSBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # each test runs in a folder of its own: a default store (sqlite:///mlflow.db) or runs/ never lands in the repo
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def half_second() -> torch.Tensor:
    """0.5 s of noise at 16 kHz, batch 1."""
    return torch.randn(1, 8000) * 0.1


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the session; `postgres.database()` gives each test its own database."""
    from servers import PostgresServer

    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture
def cuda_driver(monkeypatch: pytest.MonkeyPatch):
    """Two 80 GiB GPUs behind a stand-in driver (tests/cuda_driver.py): for contract tests without a GPU."""
    from cuda_driver import FakeCudaDriver

    return FakeCudaDriver(monkeypatch)
