"""The only module that talks to MLflow: runs, params, metrics, tags, artifacts, and reading back."""

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

import torch

from variants.errors import MbsbenchError

DEFAULT_URI = "sqlite:///mlflow.db"  # relative to the working directory
PACKAGES = ("torch", "numpy", "mlflow-skinny", "mbsbench")
# MLflow retries unreachable servers for minutes by default; we check reachability ourselves
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


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
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):  # schema creation logs INFO lines on stderr: keep stderr for errors
        logging.getLogger(name).setLevel(logging.WARNING)

    check_reachable(uri)
    with _creation_lock(uri):
        tracking = MlflowClient(tracking_uri=uri)
        tracking.search_experiments(max_results=1)  # creates the schema on first use
    return tracking


def experiment_id(tracking, name: str) -> str:
    """Id of the named experiment, created if missing (race-safe)."""
    found = tracking.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return tracking.create_experiment(name)
    except Exception:  # another process created it between the two calls
        return tracking.get_experiment_by_name(name).experiment_id


def git_state() -> dict[str, str]:
    """Commit and dirty flag of the working tree, or 'unknown' outside git."""
    root = Path(__file__).resolve().parent.parent

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
    """One MLflow run: log params, metrics (with optional step), tags and text artifacts."""

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
    import mlflow

    tracking = client(uri)
    found = tracking.get_experiment_by_name(experiment)
    if found is None:
        raise MbsbenchError(f"no experiment {experiment!r} in {uri}")
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_ids=[found.experiment_id])


def record_evaluation(uri: str, result, paths: dict, audio: list, info: dict) -> str:
    """Log an evaluation: summary means, CI and n per metric, the CSVs and a few wavs."""
    tags = provenance_tags(info["device"]) | {"task": "evaluate", "variant": info["label"],
                                              "data_fingerprint": info["data_fingerprint"]}
    with start_run(uri, "mbsbench-evaluate", f"evaluate {info['label']} {info['split']}", tags) as run:
        run.log_params(info)
        from bench.metrics import summary_means

        run.log_metrics({k: v for k, v in summary_means(result).items() if v == v})
        for path in paths.values():
            run.tracking.log_artifact(run.run_id, str(path))
        _log_wavs(run, audio)
        return run.run_id


def _log_wavs(run: Run, audio: list, folder_name: str = "enhanced") -> None:
    import soundfile as sf

    if not audio:
        return
    with tempfile.TemporaryDirectory() as folder:
        for name, wav in audio:
            sf.write(Path(folder) / f"{name}.wav", wav, 16000)
        run.tracking.log_artifacts(run.run_id, folder, folder_name)


def log_run_outcome(uri: str, info: dict, params: dict, figures: dict, train, paths: dict, audio: list,
                    parent: str | None = None) -> str:
    """Log one trained (variant, seed): params, figures, loss curves, CSVs, best checkpoint, a few wavs."""
    tags = provenance_tags(info["device"]) | {"task": "run", "variant": info["variant"], "seed": str(info["seed"]),
                                              "data_fingerprint": info["data_fingerprint"],
                                              "status": info["status"], "reason": info["reason"][:500]}
    with start_run(uri, "mbsbench-run", f"run {info['variant']} seed {info['seed']}", tags, parent) as run:
        run.log_params(params)
        run.log_metrics({k: v for k, v in figures.items() if isinstance(v, int | float) and v == v})
        for step, loss in train.train_curve[:: max(1, len(train.train_curve) // 1000)]:
            run.log_metrics({"train_loss": loss}, step=step)
        for step, loss in train.val_curve:
            run.log_metrics({"val_loss": loss}, step=step)
        for path in paths.values():
            run.tracking.log_artifact(run.run_id, str(path))
        if train.best_path is not None and Path(train.best_path).is_file():
            run.tracking.log_artifact(run.run_id, str(train.best_path), "checkpoint")
        _log_wavs(run, audio)
        return run.run_id


@contextmanager
def parent_run(uri: str, experiment: str, name: str, tags: Mapping[str, str]) -> Iterator[str]:
    """A parent run whose id children pass as `parent`."""
    with start_run(uri, experiment, name, tags) as run:
        yield run.run_id


def experiment_runs(uri: str, experiment: str):
    """Runs of an experiment as a DataFrame, or an empty one when the experiment does not exist."""
    import pandas as pd

    try:
        return search_runs(uri, experiment)
    except MbsbenchError:
        return pd.DataFrame()


def download_artifact(uri: str, run_id: str, path: str, folder: str) -> Path:
    """Local copy of one artifact of a run."""
    return Path(client(uri).download_artifacts(run_id, path, folder))


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of a metric, in step order."""
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))
