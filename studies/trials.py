"""What one trial does: measure a config of a search, or run (or profile) one (variant, seed) of an ablation.

Each returns the objective's figures, or raises TrialFailedError with the reason (OOM, NaN loss): the
worker records it as a failed trial and the study goes on.
"""

from collections.abc import Callable
from dataclasses import replace
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


def trial_function(spec: StudySpec, device: str, out: Path, workers: int = 0) -> Callable:
    """The function a worker runs for each trial of this study, on this device."""
    spec = replace(spec, settings=replace(spec.settings, device=device))
    if spec.kind == "ablation":
        return ablation_trial(spec, device, out, workers)
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
        try:
            values = evaluate_config(spec.objective, cfg, spec.settings, trial)
        except TrialFailedError as err:
            _log_trial(spec, trial, cfg, params, None, str(err))
            raise
        _log_trial(spec, trial, cfg, params, values, "")
        return values

    return run


def _log_trial(spec: StudySpec, trial, cfg, params: dict, values, reason: str) -> None:
    parent = trial.study.user_attrs.get("mlflow_run_id")
    if not (spec.tracking_uri and parent):
        return

    metrics = dict(zip(spec.metrics, values)) if values else None
    try:
        record_trial(spec.tracking_uri, spec.name, parent, trial.number,
                     cfg.to_dict() | {f"knob_{k}": v for k, v in params.items()}, metrics,
                     provenance_tags(device_name(spec.settings.device)), reason)
    except mlflow_errors() as err:  # the figures go to the study all the same: the store's failure is a warning
        warn_unlogged(trial, error_line(err, 300))


def warn_unlogged(trial, reason: str) -> None:
    """A trial whose figures reached the study but not the tracking store: a warning, and the reason kept."""
    trial.set_user_attr("log_error", reason)
    warn(f"trial {trial.number}: MLflow logging failed ({reason[:160]}); its figures are in the study")


def ablation_trial(spec: StudySpec, device: str, out: Path, workers: int) -> Callable:
    """One (variant, seed) through bench's normal path: a run (trained and scored), or a profile."""

    def run(trial) -> tuple[float, ...]:
        variant = trial.suggest_categorical("variant", spec.ablation["variants"])
        seed = trial.suggest_categorical("seed", spec.ablation["seeds"])
        if spec.ablation.get("profile"):
            return _profile_pair(spec, trial, variant, seed, device)
        return _run_pair(spec, trial, variant, seed, device, out, workers)

    return run


def _run_pair(spec: StudySpec, trial, variant: str, seed: int, device: str, out: Path, workers: int):
    request = replace(RunRequest.from_dict(spec.ablation["request"]), variants=(variant,), seeds=(seed,), out=out,
                      resume_if_present=True, skip_finished=True, parent_name=None,
                      parent_run_id=trial.study.user_attrs.get("mlflow_run_id"))
    outcome = run_experiment(request, RunContext(device, spec.tracking_uri, workers))
    row = outcome.rows()[-1]
    trial.set_user_attr("mlflow_run_id", row.get("run_id") or (outcome.runs[0].run_id if outcome.runs else ""))
    if outcome.runs and outcome.runs[0].train.status != "ok":
        raise TrialFailedError(f"training {outcome.runs[0].train.status}: {outcome.runs[0].train.reason}")
    return (float(row["pesq_wb"]),)


def _profile_pair(spec: StudySpec, trial, variant: str, seed: int, device: str):
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
