"""What one trial does: measure a config of a search, or run (or profile) one (variant, seed) of an ablation.

Each returns the objective's figures, or raises TrialFailedError with the reason (OOM, NaN loss): the
worker records it as a failed trial and the study goes on.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from bench.console import warn
from bench.devices import device_name
from bench.profiling.profile import profile_variants
from bench.profiling.workload import ProfileSettings
from bench.tracking.records import mlflow_errors, profile_recorder, record_trial
from bench.tracking.store import provenance_tags
from bench.training.experiment import RunContext, RunRequest, run_experiment
from studies.objectives import evaluate_config
from studies.space import check_values
from studies.spec import StudySpec, TrialFailedError
from variants.errors import MbsbenchError, error_line
from variants.registry import build_config

RUNS = Path("runs")  # run folders go here unless told


@dataclass(frozen=True)
class Worker:
    """How a worker runs trials: its device, the folder of its run folders, its metric processes, its index
    among a search's local workers (it seeds the sampler), a tracking store in place of the study's, a limit."""

    device: str = "cpu"
    out: Path = RUNS
    metric_workers: int = 0
    index: int | None = None
    tracking_uri: str | None = None
    max_trials: int | None = None
    verbosity: int = 0  # a spawned worker's -q / -v


def trial_function(spec: StudySpec, worker: Worker) -> Callable:
    """The function a worker runs for each trial of this study, on its device."""
    spec = replace(spec, settings=replace(spec.settings, device=worker.device))
    if spec.kind == "ablation":
        return ablation_trial(spec, worker)
    return search_trial(spec)


def search_trial(spec: StudySpec) -> Callable:
    """Suggest the knobs, build the config, measure it, log a child run of the study's run."""
    base = build_config(spec.base)

    def run(trial) -> tuple[float, ...]:
        params = {knob.name: knob.suggest(trial) for knob in spec.knobs}
        try:
            cfg = check_values(base, params)
        except MbsbenchError as err:  # a point ModelConfig refuses: this trial's result, not the worker's problem
            raise TrialFailedError(str(err)) from None
        logged = cfg.to_dict() | {f"knob_{k}": v for k, v in params.items()}
        try:
            values = evaluate_config(spec.objective, cfg, spec.settings, trial)
        except TrialFailedError as err:
            _log_trial(spec, trial, logged, str(err))
            raise
        _log_trial(spec, trial, logged, values)
        return values

    return run


def _log_trial(spec: StudySpec, trial, params: dict, outcome: tuple[float, ...] | str) -> None:
    """The trial as a child run of the study's: its config and knobs, and its figures or why it failed."""
    parent = trial.study.user_attrs.get("mlflow_run_id")
    if not (spec.tracking_uri and parent):
        return

    metrics = dict(zip(spec.metrics, outcome)) if not isinstance(outcome, str) else None
    reason = outcome if isinstance(outcome, str) else ""
    try:
        record_trial(spec.tracking_uri, spec.name, parent, trial.number, params, metrics,
                     provenance_tags(device_name(spec.settings.device)), reason)
    except mlflow_errors() as err:  # the figures go to the study all the same: the store's failure is a warning
        warn_unlogged(trial, error_line(err, 300))


def warn_unlogged(trial, reason: str) -> None:
    """A trial whose figures reached the study but not the tracking store: a warning, and the reason kept."""
    trial.set_user_attr("log_error", reason)
    warn(f"trial {trial.number}: MLflow logging failed ({reason[:160]}); its figures are in the study")


def ablation_trial(spec: StudySpec, worker: Worker) -> Callable:
    """One (variant, seed) through bench's normal path: a run (trained and scored), or a profile."""

    def run(trial) -> tuple[float, ...]:
        pair = trial.suggest_categorical("variant", spec.ablation["variants"]), \
            trial.suggest_categorical("seed", spec.ablation["seeds"])
        if spec.ablation.get("profile"):
            return _profile_pair(spec, trial, pair, worker.device)
        return _run_pair(spec, trial, pair, worker)

    return run


def _run_pair(spec: StudySpec, trial, pair: tuple[str, int], worker: Worker):
    (variant, seed), parent = pair, trial.study.user_attrs.get("mlflow_run_id")
    request = replace(RunRequest.from_dict(spec.ablation["request"]), variants=(variant,), seeds=(seed,),
                      out=worker.out, resume_if_present=True, skip_finished=True, parent_name=None,
                      parent_run_id=parent)
    outcome = run_experiment(request, RunContext(worker.device, spec.tracking_uri, worker.metric_workers))
    row = outcome.rows()[-1]
    trial.set_user_attr("mlflow_run_id", row.get("run_id") or (outcome.runs[0].run_id if outcome.runs else ""))
    if outcome.runs and outcome.runs[0].train.status != "ok":
        raise TrialFailedError(f"training {outcome.runs[0].train.status}: {outcome.runs[0].train.reason}")
    return (float(row["pesq_wb"]),)


def _profile_pair(spec: StudySpec, trial, pair: tuple[str, int], device: str):
    variant, seed = pair
    settings = ProfileSettings(**(spec.ablation["profile"] | {"device": device, "lengths": ()}))
    cfg = build_config(variant, **spec.ablation["request"]["overrides"])
    record = None
    if spec.tracking_uri:
        record = profile_recorder(spec.tracking_uri, {"seed": str(seed), "study": spec.name})
    (row,) = profile_variants({variant: cfg}, settings, record)
    trial.set_user_attr("mlflow_run_id", row.get("run_id", ""))
    if row["status"] != "ok":
        raise TrialFailedError(row.get("reason"))
    if row.get("log_error"):
        warn_unlogged(trial, row["log_error"])
    return (float(row["peak_mem_train_mib"]),)
