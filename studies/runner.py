"""`studies search`: create (or extend) a study and drain it with K worker processes on this machine.

The workers are `studies work` in child processes: they die with their parent (kill the parent and
the workers go too), and a worker that dies on its own has its trial failed and queued again here.
"""

import json
import multiprocessing
import os
import signal
from collections import Counter
from dataclasses import dataclass, replace

from bench.console import set_verbosity, status, verbosity
from bench.interrupts import add_kept, interrupt_once
from bench.tracking.records import record_study_importances
from studies.queue import Created, create_study, load_study
from studies.spec import StudySpec
from studies.storage import StorageSettings, requeue
from studies.trials import Worker
from studies.worker import INTERRUPTED, check_worker, die_with_parent, work, worker_name
from variants.errors import MbsbenchError, first_line


@dataclass(frozen=True)
class SearchResult:
    """What a search did: the creation, and the study's trials by state afterwards."""

    created: Created
    states: dict[str, int]
    reasons: list[str]


def _worker_main(name: str, storage: StorageSettings, worker: Worker, problems) -> None:
    """A spawned worker: dies with its parent, stops on the first signal, reports nothing on stdout; a problem of
    this machine (it stops the worker, its trial queued again) goes to `problems` for the parent to say once."""
    stop = interrupt_once()
    try:
        set_verbosity(worker.verbosity)  # before work() opens the storage, which sets Optuna's log level from it
        die_with_parent()
        work(name, storage, worker, stop)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except MbsbenchError as err:
        problems.put(str(err))
        raise SystemExit(2) from None


@dataclass(frozen=True)
class Search:
    """How a search runs here: its worker processes, and whether points that failed are queued again."""

    processes: int = 1
    retry_failed: bool = False


def search(spec: StudySpec, storage: StorageSettings, worker: Worker, how: Search = Search()) -> SearchResult:
    """Create the study (queueing its grid points, and failed ones again with how.retry_failed) and run its
    trials with how.processes local workers like `worker`."""
    check_worker(spec, worker)  # before anything is queued
    created = create_study(spec, storage, how.retry_failed)  # make_storage sets Optuna's log level (INFO with -v)
    if how.processes == 1:
        work(spec.name, storage, replace(worker, index=0))
    else:
        _run_processes(spec.name, storage, worker, how.processes)
    study, _ = load_study(storage, spec.name)
    record_importances(spec, study)
    return SearchResult(created, trial_states(study), fail_reasons(study))


def _run_processes(name: str, storage: StorageSettings, worker: Worker, workers: int) -> None:
    context = multiprocessing.get_context("spawn")
    problems = context.SimpleQueue()
    processes = [context.Process(target=_worker_main, args=(name, storage, replace(
        worker, index=index, verbosity=verbosity()), problems)) for index in range(workers)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt as err:
        for process in processes:  # a Ctrl-C in a terminal reached them too: let them end their trials
            process.join(5)
        for process in processes:  # a signal to us alone did not: pass it on
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(60)
        add_kept(err, _interrupted_trials(name, storage, processes))
        raise
    requeue_killed(name, storage, processes)
    said = []
    while not problems.empty():
        said.append(problems.get())
    if said:
        raise MbsbenchError(f"{len(said)} of {workers} workers stopped: " + "; ".join(dict.fromkeys(said)))


def _interrupted_trials(name: str, storage: StorageSettings, processes: list) -> str:
    """What the interrupt did to the workers' trials, read back from the study (a worker between trials had
    none in flight; one killed meanwhile has its trial failed and queued again here)."""
    try:
        requeue_killed(name, storage, processes)
        study, _ = load_study(storage, name)
    except MbsbenchError as err:  # the interrupt stays an interrupt; what became of the trials is unknown here
        return f"the study could not be read back ({first_line(err, 200)})"
    owners = {worker_name(process.pid) for process in processes}
    marked = [t.number for t in study.trials
              if t.user_attrs.get("worker") in owners and t.user_attrs.get("fail_reason") == INTERRUPTED]
    if not marked:
        return "no trial was in flight"
    return f"trial{'s' if len(marked) > 1 else ''} {', '.join(map(str, marked))} marked {INTERRUPTED} and queued again"


def requeue_killed(name: str, storage: StorageSettings, processes: list) -> None:
    """requeue_dead for each worker process a signal killed: its trial is ours now."""
    for process in processes:
        if process.exitcode is not None and process.exitcode < 0:
            requeue_dead(name, storage, process.pid, -process.exitcode)


def requeue_dead(name: str, storage: StorageSettings, pid: int, signum: int) -> None:
    """Fail the trial a dead local worker left RUNNING (with the reason) and queue it again."""
    from optuna.trial import TrialState

    study, _ = load_study(storage, name)
    owner = worker_name(pid)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("worker") == owner:
            reason = f"its worker (pid {pid}) died of signal {signum}"
            # the trial is another process's: set its reason through the storage, then tell it by number
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            study.tell(trial.number, state=TrialState.FAIL)
            requeue(study, study._storage.get_trial(trial._trial_id), storage)
            status(f"note: trial {trial.number}: {reason}; queued again")


def trial_states(study) -> dict[str, int]:
    """How many of the study's trials are in each state."""
    return dict(Counter(trial.state.name for trial in study.trials))


def fail_reasons(study) -> list[str]:
    return [f"trial {t.number} failed: {t.user_attrs.get('fail_reason', 'no heartbeat: its worker died')}"
            for t in study.trials if t.state.name == "FAIL"]


def study_importances(study) -> dict[str, float]:
    """fANOVA importances of a single-objective study with two or more distinct complete trials; else {}."""
    import optuna

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(study.directions) != 1 or len({json.dumps(t.params, sort_keys=True) for t in complete}) < 2:
        return {}
    return dict(optuna.importance.get_param_importances(study))


def record_importances(spec: StudySpec, study) -> None:
    """Log the study's importances to its MLflow run, where reports read them."""
    run_id = study.user_attrs.get("mlflow_run_id")
    importances = study_importances(study) if spec.kind == "search" else {}
    if spec.tracking_uri and run_id and importances:
        record_study_importances(spec.tracking_uri, run_id, importances)
