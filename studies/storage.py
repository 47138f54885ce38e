"""Where a study lives, and what makes it safe to share: Optuna's storages, heartbeats, retries, one lock.

- a journal file (default; one machine, or several over NFS), `sqlite:///FILE` or `postgresql://...`;
- RDB storages run with Optuna's heartbeat: a trial whose worker stopped beating for `grace` seconds
  is failed by the next worker and queued again (RetryHeartbeatStaleTrialCallback, `retries` times);
- `study_lock` serialises the few steps that must not interleave between workers on any machine
  (creating a study and queueing its points; taking the next trial): a PostgreSQL advisory lock, or
  Optuna's own file lock next to a journal or sqlite file.
"""

import hashlib
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.console import library_log_level
from bench.tracking.store import database_url
from variants.errors import MbsbenchError, error_line, first_line

DEFAULT_STORAGE = "studies.log"  # an Optuna journal file in the working directory


STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql")


@dataclass(frozen=True)
class StorageSettings:
    """A storage URL (or journal path) and how its trials are kept alive."""

    url: str = DEFAULT_STORAGE
    heartbeat_s: int = 30  # RDB only: seconds between a running trial's heartbeats
    grace_s: int = 120  # RDB only: a trial silent this long is stale: failed and retried
    retries: int = 1  # how often a stale or interrupted trial is queued again
    flag: str = field(default="--storage", compare=False)  # what the user typed it as (bench ablate: --queue)

    def __post_init__(self) -> None:
        if self.heartbeat_s < 1 or self.grace_s <= self.heartbeat_s or self.retries < 0:
            raise MbsbenchError(f"--heartbeat {self.heartbeat_s} / --grace {self.grace_s} / --retries {self.retries}:"
                                " expected heartbeat >= 1 s, grace longer than the heartbeat, retries >= 0")
        scheme = self.url.split("://", 1)[0].split("+", 1)[0]
        if not self.is_journal and scheme not in STORAGE_SCHEMES:
            raise MbsbenchError(f"{self.flag} {self.url}: unknown scheme {scheme!r}; expected a journal file, "
                                "sqlite:///FILE, postgresql://... or mysql://...")
        if self.is_journal and Path(self.url).expanduser().is_dir():
            raise MbsbenchError(f"{self.flag} {self.url}: a folder; expected a journal file, e.g. "
                                f"{self.url.rstrip('/')}/studies.log")

    @property
    def is_journal(self) -> bool:
        return "://" not in self.url

    def require_existing(self) -> None:
        """For commands that only read: a journal or sqlite file that is not there is an error, never created."""
        path = Path(self.url).expanduser() if self.is_journal else \
            Path(self.url[len("sqlite:///"):]) if self.url.startswith("sqlite:///") else None
        if path is not None and not path.is_file():
            raise MbsbenchError(f"{self.flag} {self.url}: no such storage ({path} does not exist); give the one "
                                "studies create / search wrote to")


@contextmanager
def stable_enough() -> Iterator[None]:
    """Optuna marks heartbeats and their retry callback experimental (since 2.8); we rely on them knowingly."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def retry_callback(settings: StorageSettings):
    """Optuna's callback that queues a failed trial again (same parameters), at most `retries` times."""
    import optuna

    with stable_enough():
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=settings.retries)


def requeue(study, trial, settings: StorageSettings, counted: bool = True) -> bool:
    """Queue a copy of a failed trial (same parameters) the way Optuna's retry callback does ('failed_trial',
    'retry_history'), at most `retries` times (always when not `counted`: a trial a worker could not run), without
    its user attributes (its fail reason stays with it)."""
    import optuna

    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if counted and len(history) > settings.retries:
        return False
    system = {k: v for k, v in trial.system_attrs.items() if k not in ("failed_trial", "retry_history")}
    system |= {"failed_trial": trial.system_attrs.get("failed_trial", trial.number), "retry_history": history}
    study.add_trial(optuna.create_trial(state=optuna.trial.TrialState.WAITING, params=trial.params,
                                        distributions=trial.distributions, system_attrs=system))
    return True


def make_storage(settings: StorageSettings | str):
    """The Optuna storage; a one-line error for a missing folder or an unreachable database."""
    import optuna

    optuna.logging.set_verbosity(library_log_level())  # Optuna's INFO lines only with -v
    settings = StorageSettings(settings) if isinstance(settings, str) else settings
    if settings.is_journal:
        folder = Path(settings.url).expanduser().resolve().parent
        if not folder.is_dir():
            raise MbsbenchError(f"{settings.flag} {settings.url}: folder {folder} does not exist")
        return open_journal(Path(settings.url).expanduser())
    try:  # under the lock: two machines opening a new database at once would both create its tables
        with stable_enough(), study_lock(settings, "(schema)"):
            return optuna.storages.RDBStorage(
                database_url(settings.url), engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=settings.heartbeat_s, grace_period=settings.grace_s,
                heartbeat_stale_trial_callback=retry_callback(settings))
    except ImportError as err:
        raise MbsbenchError(f"{settings.flag} {settings.url}: no database driver ({err}); pip install -e '.[postgres]'"
                            " installs psycopg 3") from None
    except Exception as err:  # sqlalchemy raises many kinds for a bad or unreachable URL
        message = f"{settings.flag} {settings.url}: unreachable ({error_line(err, 120)})"
        raise MbsbenchError(message) from None


def open_journal(path: Path):
    """A journal storage whose appends never land on a torn line; a one-line error naming a bad line."""
    from optuna.storages.journal import JournalStorage

    from studies.journal import TornSafeJournal, check_journal

    try:
        return JournalStorage(TornSafeJournal(str(path)))
    except ValueError:  # JSONDecodeError, or Optuna's 'Invalid log format'
        check_journal(path)
        raise


def _lock_key(name: str) -> int:
    """A signed 64-bit key for PostgreSQL's advisory locks, from the study name."""
    return int.from_bytes(hashlib.sha256(f"study-lock:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def study_lock(settings: StorageSettings, name: str) -> Iterator[None]:
    """Only one process on any machine holds the study's lock at a time."""
    if settings.url.startswith(("postgresql", "mysql")):
        with _database_lock(settings, name):
            yield
        return
    from optuna.storages.journal import JournalFileOpenLock

    path = settings.url.removeprefix("sqlite:///") if settings.url.startswith("sqlite:///") else settings.url
    lock = JournalFileOpenLock(f"{Path(path).expanduser()}.{hashlib.sha1(name.encode()).hexdigest()[:8]}")
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _database_lock(settings: StorageSettings, name: str) -> Iterator[None]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(database_url(settings.url), poolclass=sqlalchemy.pool.NullPool)
    is_pg = settings.url.startswith("postgresql")
    take = "SELECT pg_advisory_lock(:key)" if is_pg else "SELECT GET_LOCK(:key, -1)"
    give = "SELECT pg_advisory_unlock(:key)" if is_pg else "SELECT RELEASE_LOCK(:key)"
    key = _lock_key(name) if is_pg else f"study-lock-{hashlib.sha1(name.encode()).hexdigest()}"
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(take), {"key": key})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text(give), {"key": key})
    engine.dispose()


def storage_errors() -> tuple[type[BaseException], ...]:
    """What an Optuna storage raises when its database is gone (Optuna wraps some in StorageInternalError)."""
    import optuna
    import sqlalchemy

    return optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError


def unreachable(settings: StorageSettings, err: BaseException, what: str) -> MbsbenchError:
    """One line for a storage gone under a worker: its URL, the database's own words, what became of the work."""
    cause = err.__cause__ or err  # Optuna's 'invalid data in the commit' hides a lost connection
    return MbsbenchError(f"{settings.flag} {settings.url}: unreachable ({first_line(cause, 160)}); this worker stops; "
                         f"{what}")


def beats(storage) -> bool:
    """Whether an Optuna storage keeps heartbeats (an RDB storage made with an interval; never a journal)."""
    return hasattr(storage, "record_heartbeat") and bool(storage.get_heartbeat_interval())


class Heartbeat:
    """Records a running trial's heartbeat every `interval` seconds in a thread, for RDB storages."""

    def __init__(self, storage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except storage_errors():  # an outage: the worker hears of it at its next write; beat on meanwhile
                pass
            if self.stop.wait(self.interval):
                return

    def __enter__(self) -> "Heartbeat":
        if beats(self.storage):
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
