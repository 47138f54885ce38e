"""Work anywhere: take the study's next trial, run it, record it; until the queue or the budget is done.

Trials are taken under the study's lock (ask), run outside it, and told. A running trial beats
(RDB storages); a trial of a dead worker is failed once its grace is over and queued again
(Optuna's retry callback), and any worker runs the retry. Ctrl-C or SIGTERM ends the trial in
flight as FAIL 'interrupted', queues it again, and stops the worker with one line.
"""

import ctypes
import os
import signal
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field, replace

from bench.compiling import check_compile
from bench.data.datasets import check_spec
from bench.interrupts import Interrupted, add_kept, signals_deferred
from bench.invocation import commanded_by
from bench.malloc import tune_malloc
from bench.tracking.store import client
from bench.training.request import check_writable
from studies.queue import COMMAND_ATTR, load_study
from studies.spec import StudySpec, TrialFailedError
from studies.storage import (
    Heartbeat,
    StorageSettings,
    beats,
    requeue,
    stable_enough,
    storage_errors,
    study_lock,
    unreachable,
)
from studies.trials import Worker, trial_function
from variants.errors import MbsbenchError, error_line, first_line

INTERRUPTED = "interrupted"
PUT_BACK = "put back"  # the reason of a trial this worker could not run (its setup, not the trial): queued again
POLL_S = 2  # seconds between looks at the queue while other workers' trials run


@dataclass
class WorkReport:
    """What one worker did: trial numbers by how they ended."""

    states: dict[str, list[int]] = field(default_factory=dict)

    def add(self, state: str, number: int) -> None:
        self.states.setdefault(state, []).append(number)

    @property
    def ran(self) -> int:
        return sum(len(numbers) for numbers in self.states.values())


def _counts_toward_budget(trial) -> bool:
    """A sampler study's budget counts every trial but those failed by a crash or an interrupt (retried)."""
    from optuna.trial import TrialState

    if trial.state != TrialState.FAIL:
        return True
    reason = trial.user_attrs.get("fail_reason", "")
    return reason not in ("", INTERRUPTED) and not reason.startswith(PUT_BACK)


def next_trial(study, spec: StudySpec):
    """The next trial to run (a queued one first), or None when the queue (grid) or the budget is done."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return _ask(study)
    if spec.sampler == "grid" or spec.kind == "ablation":
        return None
    return _ask(study) if sum(_counts_toward_budget(t) for t in trials) < spec.trials else None


def _ask(study):
    with warnings.catch_warnings():  # Optuna warns that heartbeats want optimize(); run_trial beats itself
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        trial = study.ask()
    if beats(study._storage):
        # the first beat before the trial leaves the lock: a trial without any beat is never found stale
        study._storage.record_heartbeat(trial._trial_id)
    return trial


def others_running(study) -> bool:
    from optuna.trial import TrialState

    return any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False))


def sampler_for(spec: StudySpec, index: int | None):
    """TPE for a sampler study, seeded per worker (the same seed on every machine would propose the same
    points); a grid's points are queued, so its sampler never chooses one."""
    import optuna

    seed = spec.settings.seed * 1000 + (index if index is not None else os.getpid() % 1000)
    return optuna.samplers.TPESampler(seed=seed) if spec.sampler == "tpe" else optuna.samplers.RandomSampler(seed)


def work(name: str, storage: StorageSettings, worker: Worker, stop=None) -> WorkReport:
    """Run trials of the study until it is done, or the worker's max_trials; a KeyboardInterrupt is re-raised
    after the trial in flight was marked interrupted and queued again. `stop` (interrupts.interrupt_once)
    ends the loop after a trial that an interrupt did not reach (one lost in a finalizer)."""
    import optuna

    tune_malloc()  # as every bench command that computes: trials' step times as steady as a profile's
    study, spec = load_study(storage, name)
    if worker.tracking_uri:
        spec = replace(spec, tracking_uri=worker.tracking_uri)
    check_worker(spec, worker)
    study = optuna.load_study(study_name=name, storage=study._storage, sampler=sampler_for(spec, worker.index))
    run = trial_function(spec, worker)
    creator = study.user_attrs.get(COMMAND_ATTR, "")  # read once: no storage round trip once a trial is taken
    report = WorkReport()
    while worker.max_trials is None or report.ran < worker.max_trials:
        trial = None
        try:
            with signals_deferred():  # a trial taken is a trial held: an interrupt comes once it is in hand
                trial = _next(study, spec, storage)
        except storage_errors() as err:
            raise unreachable(storage, err, "no trial was in its hands") from None
        except KeyboardInterrupt as err:
            if trial is not None:
                _interrupted(study, trial, storage, err)
            raise
        if trial is None:
            if spec.sampler == "grid" and not storage.is_journal and others_running(study):
                time.sleep(min(storage.heartbeat_s, POLL_S))  # a running trial may go stale and come back
                continue
            break
        with commanded_by(creator):  # the runs made for the study's creator
            report.add(run_trial(study, trial, run, storage), trial.number)
        if stop is not None and stop.requested:
            raise Interrupted(f"stopped after trial {trial.number}", stop.signum)
    return report


def _next(study, spec: StudySpec, storage: StorageSettings):
    """The trial to run next, after failing (and queueing again) the trials of dead workers."""
    import optuna

    with stable_enough():
        optuna.storages.fail_stale_trials(study)
    with study_lock(storage, study.study_name):
        return next_trial(study, spec)


def check_worker(spec: StudySpec, worker: Worker) -> None:
    """What this machine needs before it takes a trial: the study's data, a writable --out for run folders, the
    study's tracking store, what its --compile mode needs on this device. A one-line error otherwise, and the
    queue stays as it is."""
    check_compile(spec.compile_mode, worker.device)
    trains = spec.kind == "ablation" and not spec.ablation.get("profile")
    if trains:
        check_spec(spec.ablation["request"]["data"])
        check_writable(worker.out)
    elif "val_pesq_wb" in spec.metrics:
        check_spec(spec.settings.data)
    if spec.tracking_uri:
        client(spec.tracking_uri)


def worker_name(pid: int) -> str:
    """How a trial names the worker process that runs it (its 'worker' attribute): host and pid."""
    return f"{socket.gethostname()}:{pid}"


def run_trial(study, trial, run, storage: StorageSettings) -> str:
    """Run one trial with its heartbeat and tell how it ended: COMPLETE, PRUNED or FAIL (with the reason)."""
    try:
        trial.set_user_attr("worker", worker_name(os.getpid()))
        # Optuna's own optimize() beats inside; with ask-and-tell the beat is ours (storage.record_heartbeat)
        with Heartbeat(study._storage, trial._trial_id, storage.heartbeat_s):
            return _run_and_tell(study, trial, run, storage)
    except storage_errors() as err:
        raise _storage_lost(study, trial, storage, err) from None
    except KeyboardInterrupt as err:  # in the objective, or before or after it: a trial still running is ours
        if study._storage.get_trial(trial._trial_id).state.name == "RUNNING":
            _interrupted(study, trial, storage, err)
        raise


def _storage_lost(study, trial, storage: StorageSettings, err: BaseException) -> MbsbenchError:
    """The storage went away under a trial: while the storage comes back within the grace, the trial is failed
    with that reason and queued again; otherwise the next worker fails and queues it (no heartbeat)."""
    reason = f"{PUT_BACK}: storage unreachable: {first_line(err.__cause__ or err, 300)}"
    deadline = time.monotonic() + max(storage.grace_s, 10)
    while time.monotonic() < deadline:
        try:
            _put_back(study, trial, storage, reason)
            return unreachable(storage, err, f"trial {trial.number} failed with that reason and queued again")
        except storage_errors():
            time.sleep(1)
        except RuntimeError:  # failed meanwhile by another worker (no heartbeat) and queued again by it
            break
    return unreachable(storage, err, f"trial {trial.number} is queued again by the next worker once the storage is "
                                     "back and its heartbeat's grace is over")


def _run_and_tell(study, trial, run, storage: StorageSettings) -> str:
    """The trial's objective, and what it ended as, told to the study."""
    import optuna
    from optuna.trial import TrialState

    try:
        values = run(trial)
    except optuna.TrialPruned as err:
        trial.set_user_attr("prune_reason", str(err)[:500])
        study.tell(trial, state=TrialState.PRUNED)
        return "PRUNED"
    except TrialFailedError as err:
        return _fail(study, trial, str(err))
    except (MbsbenchError, OSError) as err:  # this machine's problem (data, disk, folder), not the trial's
        _put_back(study, trial, storage, f"{PUT_BACK}: {error_line(err, 400)}")
        raise MbsbenchError(f"study {study.study_name!r}: trial {trial.number} put back in the queue, this worker "
                            f"stops: {first_line(err, 300)}") from None
    except (RuntimeError, MemoryError, ValueError) as err:  # a failure is a result, recorded; the study goes on
        return _fail(study, trial, error_line(err, 400))
    study.tell(trial, list(values))
    return "COMPLETE"


def _interrupted(study, trial, storage: StorageSettings, err: KeyboardInterrupt) -> None:
    """A trial an interrupt stopped: failed 'interrupted' and queued again, and the interrupt says so."""
    _fail(study, trial, INTERRUPTED)
    requeue(study, study._storage.get_trial(trial._trial_id), storage)
    add_kept(err, f"trial {trial.number} of study {study.study_name!r} marked interrupted and queued again")


def _put_back(study, trial, storage: StorageSettings, reason: str) -> None:
    """A trial this worker could not run (not the trial's own result): failed with the reason, queued again
    without counting against its retries."""
    _fail(study, trial, reason)
    requeue(study, study._storage.get_trial(trial._trial_id), storage, counted=False)


def _fail(study, trial, reason: str) -> str:
    from optuna.trial import TrialState

    trial.set_user_attr("fail_reason", reason[:500])
    study.tell(trial, state=TrialState.FAIL)
    return "FAIL"


def die_with_parent() -> None:
    """In a worker process: SIGTERM when the parent dies (Linux prctl), or a thread that notices (elsewhere)."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.prctl(1, signal.SIGTERM) == 0:  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before the call
                os.kill(os.getpid(), signal.SIGTERM)
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()
