"""The only module that imports MLflow: the client, runs, params, metrics, tags, artifacts, reading back."""

import fcntl
import importlib.metadata
import importlib.util
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
from bench.invocation import command_tags
from bench.malloc import malloc_setting
from bench.tracking.liveness import mark_orphans, owner_tags
from variants.errors import MbsbenchError, error_line, first_line

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
    # an http(s) store would print "View run ... at:" on stdout, which holds results only (--format json parses)
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
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
    """Raise a one-line error when the tracking URI cannot be used (checked before any work starts)."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme in ("http", "https"):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            message = f"tracking URI {uri} is unreachable ({reason}); start the server or use --no-track"
            raise MbsbenchError(message) from None
    elif scheme == "sqlite":
        path = _sqlite_path(uri)
        folder = (path or Path(uri)).parent
        if path is None or not folder.resolve().is_dir() or not os.access(folder.resolve(), os.W_OK):
            raise MbsbenchError(f"tracking URI {uri}: folder {folder} does not exist or is not writable "
                                "(expected sqlite:///FILE)")
    elif scheme.split("+")[0] in DATABASE_SCHEMES:
        check_database(uri, timeout)
    elif scheme in ("", "file"):
        folder = uri.removeprefix("file://").rstrip("/") or "mlflow"
        raise MbsbenchError(f"tracking URI {uri!r} is a folder: MLflow's file store is not supported here; use "
                            f"sqlite:///{folder}.db, a database or a server")
    else:
        raise MbsbenchError(f"tracking URI {uri!r}: unknown scheme {scheme!r}; expected sqlite:///FILE, "
                            "postgresql://..., mysql://... or http(s)://SERVER")


DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")


def database_url(url: str) -> str:
    """A database URL with the driver that is installed: postgresql:// means psycopg 3 (the `postgres` extra)
    when psycopg2, SQLAlchemy's default, is absent. Other URLs, and ones naming a driver, pass unchanged."""
    if not url.startswith("postgresql://"):
        return url

    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def check_database(uri: str, timeout: float) -> None:
    """Connect to a database tracking store once, so that a wrong host or password fails before the work."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(database_url(uri), connect_args=_connect_timeout(uri, timeout))
        with engine.connect():
            pass
        engine.dispose()
    except ImportError as err:
        raise MbsbenchError(f"tracking URI {uri}: no database driver ({err}); pip install -e '.[postgres]' "
                            "installs psycopg 3") from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as err:
        raise MbsbenchError(f"tracking URI {uri}: unreachable ({first_line(err, 160)}); "
                            "use --no-track to skip logging") from None


def _connect_timeout(uri: str, timeout: float) -> dict:
    return {"connect_timeout": int(timeout)} if uri.startswith(("postgresql", "mysql")) else {}


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


_CLIENTS: dict[tuple[int, str], object] = {}


def forget_clients() -> None:
    """A new command opens its stores afresh (and looks for orphaned runs again), also in one process."""
    _CLIENTS.clear()


def client(uri: str, read_only: bool = False):
    """The MlflowClient of a URI (one per process): the store checked, its schema created once under a lock,
    and runs left RUNNING by dead processes of this host marked KILLED. Read-only (reports): a sqlite file that
    does not exist is an error, never a new empty store."""
    key = (os.getpid(), uri)
    if key in _CLIENTS:
        return _CLIENTS[key]
    path = _sqlite_path(uri)
    if read_only and path is not None and not path.is_file():
        raise MbsbenchError(f"tracking URI {uri}: no such store ({path} does not exist); give the store that "
                            "bench profile / run logged to")
    check_reachable(uri)
    mlflow = mlflow_module()
    import sqlalchemy  # MLflow's database stores: a corrupt sqlite file is its DatabaseError

    try:
        with _creation_lock(uri):
            tracking = mlflow.tracking.MlflowClient(tracking_uri=database_url(uri))
            tracking.search_experiments(max_results=1)  # creates the schema on first use
    except (mlflow.exceptions.MlflowException, sqlalchemy.exc.SQLAlchemyError, OSError) as err:
        raise MbsbenchError(f"tracking URI {uri}: not usable ({first_line(err, 160)})") from None
    _CLIENTS[key] = tracking

    mark_orphans(tracking)
    return tracking


def experiment_id(tracking, name: str) -> str:
    """Id of the named experiment, created if missing (race-safe).

    A sqlite store keeps its artifacts beside the database file (FOLDER/mlruns), not in whatever folder
    the command runs from, so that the store is one folder that moves as a whole.
    """
    found = tracking.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    path = _sqlite_path(tracking.tracking_uri)
    location = (path.resolve().parent / "mlruns").as_uri() if path is not None else None
    try:
        return tracking.create_experiment(name, artifact_location=location)
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
    """Tags every run carries: git state, package versions, device, torch threads, malloc, the command behind it."""
    import torch

    tags = git_state() | {"device": device_label, "torch_threads": str(torch.get_num_threads()),
                          "malloc": malloc_setting()} | command_tags()
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

    def _send(self, kind: str, items: list, size: int) -> None:
        """log_batch of `kind` ('params', 'metrics') in requests of at most `size` items (MLflow's limits)."""
        for start in range(0, len(items), size):
            self.tracking.log_batch(self.run_id, **{kind: items[start : start + size]})

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self._send("params", [Param(k, v[:6000]) for k, v in _flat_params(params).items()], 100)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._send("metrics", [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None], 1000)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.tracking.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_points(self, name: str, points: list[tuple[int, float]]) -> None:
        """Many (step, value) of one metric in as few requests as MLflow allows."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._send("metrics", [Metric(name, float(v), now, step) for step, v in points], 1000)

    def log_text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_text(text)
            self.tracking.log_artifact(self.run_id, str(path))

    def log_file(self, path: Path, folder: str | None = None) -> None:
        self.tracking.log_artifact(self.run_id, str(path), folder)

    def log_folder(self, path: Path, folder: str | None = None) -> None:
        self.tracking.log_artifacts(self.run_id, str(path), folder)

    def end(self, status: str, reason: str = "") -> None:
        """Terminate the run; a FAILED or KILLED one keeps its reason as the tag 'end_reason'."""
        if reason:
            self.tracking.set_tag(self.run_id, "end_reason", reason[:500])
        self.tracking.set_terminated(self.run_id, status)

    def reopen(self) -> None:
        """Set a terminated run RUNNING again, owned by this process (a resumed training); why it ended before
        moves to 'previous_end_reason', so that a run that then finishes does not say it was interrupted."""
        before = self.tracking.get_run(self.run_id).data.tags.get("end_reason")
        self.set_tags(owner_tags() | ({"previous_end_reason": before} if before else {}))
        if before:
            self.tracking.delete_tag(self.run_id, "end_reason")
        self.tracking.update_run(self.run_id, status="RUNNING")


def create_run(uri: str, experiment: str, run_name: str, tags: Mapping[str, str] | None = None,
               parent: str | None = None) -> Run:
    """A new RUNNING run owned by this process (see liveness.py)."""
    tracking = client(uri)
    all_tags = dict(tags or {}) | owner_tags() | {"mlflow.runName": run_name}
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    run = tracking.create_run(experiment_id(tracking, experiment), tags=all_tags, run_name=run_name)
    return Run(tracking, run.info.run_id)


def end_status(err: BaseException | None) -> tuple[str, str]:
    """MLflow's end status for how a block ended, and the reason: KILLED for an interrupt, FAILED for an error."""
    if err is None:
        return "FINISHED", ""
    if isinstance(err, KeyboardInterrupt):
        return "KILLED", "interrupted (SIGINT or SIGTERM)"
    return "FAILED", error_line(err, 400)


@contextmanager
def ended(run: Run) -> Iterator[Run]:
    """The run, ended FINISHED after the block, or KILLED (interrupt) / FAILED with the reason (and re-raised)."""
    try:
        yield run
    except BaseException as err:
        run.end(*end_status(err))
        raise
    run.end("FINISHED")


def start_run(uri: str, experiment: str, run_name: str, tags: Mapping[str, str] | None = None,
              parent: str | None = None):
    """A new run for a with-block that ends it (see ended)."""
    return ended(create_run(uri, experiment, run_name, tags, parent))


# MLflow's run attributes under our names: 'run_status' (FINISHED, FAILED, KILLED, RUNNING) is not the 'status'
# tag a task logs (ok, oom, nan, ...)
RUN_ATTRIBUTES = {"run_id": "run_id", "status": "run_status", "start_time": "start_time", "end_time": "end_time"}
KINDS = ("tags", "params", "metrics")


def runs_table(uri: str, experiment: str, tags: Mapping[str, str] | None = None, status: str | None = None):
    """The runs of an experiment (those with these tag values and this run status, when given) as a tidy frame:
    run_id, run_status, start_time, end_time, and each tag, param and metric under its own name. Empty when the
    experiment does not exist."""
    import pandas as pd

    mlflow = mlflow_module()
    found = client(uri).get_experiment_by_name(experiment)
    if found is None:
        return pd.DataFrame()
    clauses = [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()] + \
        ([f"attributes.status = '{status}'"] if status else [])
    mlflow.set_tracking_uri(database_url(uri))
    return tidy_runs(mlflow.search_runs(experiment_ids=[found.experiment_id], filter_string=" and ".join(clauses)))


def tidy_runs(raw):
    """MLflow's search frame (tags.X, params.X, metrics.X, status, ...) with each column under its own name. A name
    two kinds share is one column where they agree on every run that has both; where they differ it is an error,
    never one value silently hiding the other."""
    import pandas as pd

    columns: dict[str, object] = {}
    for column in raw.columns:
        kind, _, name = column.partition(".")
        name = RUN_ATTRIBUTES.get(column) or (name if kind in KINDS else "")
        if not name:
            continue  # experiment_id, artifact_uri, lifecycle_stage: not ours to read
        if name not in columns:
            columns[name] = raw[column]
        elif _agree(columns[name], raw[column]):
            columns[name] = columns[name].combine_first(raw[column])
        else:
            raise MbsbenchError(f"tracking: runs log {name!r} twice, as {column} and another kind, with different "
                                "values")
    return pd.DataFrame(columns, index=raw.index)


def _agree(one, other) -> bool:
    both = one.notna() & other.notna()
    return bool((one[both].astype(str) == other[both].astype(str)).all())


def run_figures(uri: str, run_id: str) -> dict[str, float]:
    """Every figure (metric) of a run: its last logged value."""
    return dict(client(uri).get_run(run_id).data.metrics)


class ArtifactMissingError(MbsbenchError):
    """A run without the artifact asked for: an answer, unlike a store that cannot be reached."""


def download_artifact(uri: str, run_id: str, path: str, folder: str) -> Path:
    """Local copy of one artifact of a run; ArtifactMissingError when the run has none, a one-line error when the
    artifact store cannot be reached."""
    mlflow = mlflow_module()
    try:
        return Path(client(uri).download_artifacts(run_id, path, folder))
    except FileNotFoundError:
        raise ArtifactMissingError(f"run {run_id} has no artifact {path!r}") from None
    except mlflow.exceptions.MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            raise ArtifactMissingError(f"run {run_id} has no artifact {path!r}") from None
        raise MbsbenchError(f"tracking URI {uri}: artifacts unreachable ({first_line(err, 160)})") from None
    except OSError as err:
        raise MbsbenchError(f"tracking URI {uri}: artifacts unreachable ({error_line(err, 160)})") from None


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of a metric, in step order."""
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))
