"""The only module that imports MLflow: the client, runs, params, metrics, tags, artifacts, reading back."""

import fcntl
import importlib.metadata
import json
import logging
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.console import library_log_level
from variants.errors import MbsbenchError

DEFAULT_URI = "sqlite:///mlflow.db"  # relative to the working directory
PACKAGES = ("torch", "numpy", "mlflow-skinny", "optuna", "mbsbench")
MLFLOW_ENVIRONMENT = {
    # no telemetry thread, no file under ~/.config, no look-up of a telemetry host at run time
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    # MLflow retries unreachable servers for minutes by default; we check reachability ourselves
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def mlflow_module():
    """The mlflow package, imported after its environment is set (telemetry starts at import)."""
    for key, value in MLFLOW_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    import mlflow

    for name in ("mlflow", "alembic"):  # schema creation logs INFO lines on stderr: shown only with -v
        logging.getLogger(name).setLevel(library_log_level())
    return mlflow


def resolve_uri(explicit: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else a sqlite file in the working directory."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise a one-line error when the tracking URI cannot be used."""
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            message = f"tracking URI {uri} is unreachable ({reason}); start the server or use --no-track"
            raise MbsbenchError(message) from None
        return
    path = _sqlite_path(uri)
    folder = path.parent if path is not None else Path(uri.removeprefix("file://")).parent
    if not folder.resolve().is_dir() or not os.access(folder.resolve(), os.W_OK):
        raise MbsbenchError(f"tracking URI {uri}: folder {folder} does not exist or is not writable")


@contextmanager
def _creation_lock(uri: str) -> Iterator[None]:
    """Serialise the first use of a sqlite store: MLflow's schema migration is not concurrency-safe."""
    path = _sqlite_path(uri)
    if path is None:
        yield
        return
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def client(uri: str):
    """An MlflowClient for the URI, creating (once, under a lock) the sqlite store if needed."""
    mlflow = mlflow_module()
    check_reachable(uri)
    with _creation_lock(uri):
        tracking = mlflow.tracking.MlflowClient(tracking_uri=uri)
        tracking.search_experiments(max_results=1)  # creates the schema on first use
    return tracking


def experiment_id(tracking, name: str) -> str:
    """Id of the named experiment, created if missing (race-safe)."""
    found = tracking.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return tracking.create_experiment(name)
    except mlflow_module().exceptions.MlflowException:  # another process created it between the two calls
        return tracking.get_experiment_by_name(name).experiment_id


def git_state() -> dict[str, str]:
    """Commit and dirty flag of the working tree, or 'unknown' outside git."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD") or "unknown"
        dirty = "true" if git("status", "--porcelain", "--untracked-files=no") else "false"
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", "unknown"
    return {"git_commit": commit, "git_dirty": dirty}


def provenance_tags(device_label: str) -> dict[str, str]:
    """Tags every run carries: git state, package versions, device, torch threads."""
    import torch

    tags = git_state() | {"device": device_label, "torch_threads": str(torch.get_num_threads())}
    for package in PACKAGES:
        try:
            tags[f"version_{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            tags[f"version_{package}"] = "not installed"
    return tags


def _flat_params(params: Mapping[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) if isinstance(v, list | tuple | dict) else str(v) for k, v in params.items()}


class Run:
    """One MLflow run: log params, metrics (with optional step), tags and artifacts."""

    def __init__(self, tracking, run_id: str):
        self.tracking = tracking
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in _flat_params(params).items()]
        for start in range(0, len(items), 100):
            self.tracking.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        for start in range(0, len(items), 500):
            self.tracking.log_batch(self.run_id, metrics=items[start : start + 500])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.tracking.set_tag(self.run_id, key, str(value))

    def log_text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_text(text)
            self.tracking.log_artifact(self.run_id, str(path))

    def log_file(self, path: Path, folder: str | None = None) -> None:
        self.tracking.log_artifact(self.run_id, str(path), folder)

    def log_folder(self, path: Path, folder: str | None = None) -> None:
        self.tracking.log_artifacts(self.run_id, str(path), folder)


@contextmanager
def start_run(
    uri: str, experiment: str, run_name: str, tags: Mapping[str, str] | None = None, parent: str | None = None,
) -> Iterator[Run]:
    """A run that ends FINISHED, or FAILED (and re-raises) when the block raises."""
    tracking = client(uri)
    all_tags = dict(tags or {}) | {"mlflow.runName": run_name}
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    run = tracking.create_run(experiment_id(tracking, experiment), tags=all_tags, run_name=run_name)
    try:
        yield Run(tracking, run.info.run_id)
    except BaseException:
        tracking.set_terminated(run.info.run_id, "FAILED")
        raise
    tracking.set_terminated(run.info.run_id, "FINISHED")


def search_runs(uri: str, experiment: str):
    """All runs of an experiment as a pandas DataFrame (params.*, metrics.*, tags.* columns)."""
    mlflow = mlflow_module()
    tracking = client(uri)
    found = tracking.get_experiment_by_name(experiment)
    if found is None:
        raise MbsbenchError(f"no experiment {experiment!r} in {uri}")
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_ids=[found.experiment_id])


def experiment_runs(uri: str, experiment: str):
    """Runs of an experiment as a DataFrame, or an empty one when the experiment does not exist."""
    import pandas as pd

    try:
        return search_runs(uri, experiment)
    except MbsbenchError:
        return pd.DataFrame()


def download_artifact(uri: str, run_id: str, path: str, folder: str) -> Path:
    """Local copy of one artifact of a run; an error naming the artifact when the run has none."""
    mlflow = mlflow_module()
    try:
        return Path(client(uri).download_artifacts(run_id, path, folder))
    except (mlflow.exceptions.MlflowException, OSError) as err:
        raise MbsbenchError(f"run {run_id} has no artifact {path!r} ({type(err).__name__})") from None


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of a metric, in step order."""
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))
