"""Queue once, from anywhere: create a study (its spec, its MLflow run) and enqueue each point exactly once.

Creating runs under the study's lock (storage.study_lock), so that two machines creating the same
study at once make one study, one MLflow run and one queue: the second finds the first's work and
adds only points never queued before.
"""

import random
from dataclasses import asdict, dataclass

from bench.devices import device_name
from bench.invocation import current_command
from bench.tracking.records import record_study
from bench.tracking.store import provenance_tags
from studies.space import grid
from studies.spec import SPEC_ATTR, StudySpec
from studies.storage import StorageSettings, make_storage, study_lock
from variants.errors import MbsbenchError

QUEUED_ATTR = "mbsbench_queued"  # every point ever queued, so that none is queued twice
COMMAND_ATTR = "mbsbench_command"  # the command that created the study: what reproduces its runs


@dataclass(frozen=True)
class Created:
    """What create_study did: points queued now, points queued before, the study's MLflow run, failed points
    queued again (--retry-failed)."""

    queued: int
    before: int
    run_id: str | None
    retried: int = 0

    @property
    def retried_text(self) -> str:
        return f", {self.retried} failed points queued again" if self.retried else ""


def points(spec: StudySpec) -> list[dict]:
    """Every point of a grid study: knob combinations, or (variant, seed) pairs of an ablation."""
    if spec.kind == "ablation":
        return [{"variant": v, "seed": s} for v in spec.ablation["variants"] for s in spec.ablation["seeds"]]
    return grid(list(spec.knobs))


def create_study(spec: StudySpec, storage: StorageSettings, retry_failed: bool = False) -> Created:
    """Create (or find) the study and queue its untried grid points, and with `retry_failed` each point whose
    every trial failed; safe to run twice, or twice at once."""
    import optuna

    backend = make_storage(storage)
    with study_lock(storage, spec.name):
        study = optuna.create_study(study_name=spec.name, storage=backend, directions=list(spec.directions),
                                    load_if_exists=True)
        known = study.user_attrs.get(SPEC_ATTR)
        differ = StudySpec.from_json(known).differences(spec) if known is not None else []
        if differ:
            raise MbsbenchError(f"study {spec.name!r} in {storage.url} was created with other settings (in the study"
                                f" vs here: {'; '.join(differ)[:300]}); pick another --study-name")
        if known is None:
            study.set_user_attr(SPEC_ATTR, spec.to_json())
            study.set_user_attr("objective", spec.objective)
            study.set_user_attr(COMMAND_ATTR, current_command())  # its workers' runs carry it
        run_id = _study_run(spec, study)
        queued = study.user_attrs.get(QUEUED_ATTR, [])
        fresh = [] if spec.sampler != "grid" else [p for p in points(spec) if p not in queued]
        random.Random(f"{spec.settings.seed}-{len(queued)}").shuffle(fresh)  # the order of a grid is no signal
        fresh = fresh[: spec.trials] if spec.trials is not None else fresh
        retried = failed_points(study) if retry_failed else []
        for point in fresh + retried:
            study.enqueue_trial(point)
        study.set_user_attr(QUEUED_ATTR, queued + fresh)
    return Created(len(fresh), len(queued), run_id, len(retried))


def _point(trial) -> dict:
    """A trial's parameters: those it ran with, or those it was queued with (a waiting trial has none yet)."""
    return dict(trial.params) or dict(trial.system_attrs.get("fixed_params", {}))


def failed_points(study) -> list[dict]:
    """The points whose every trial failed: none complete, pruned, running or queued."""
    from optuna.trial import TrialState

    failed, alive = [], []
    for trial in study.get_trials(deepcopy=False):
        (failed if trial.state == TrialState.FAIL else alive).append(_point(trial))
    return [p for i, p in enumerate(failed) if p not in alive and p not in failed[:i]]


def load_study(storage: StorageSettings, name: str):
    """The study and its spec; an error naming the studies there when it is missing or not ours."""
    import optuna

    backend = make_storage(storage)
    try:
        study = optuna.load_study(study_name=name, storage=backend)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(backend)]
        raise MbsbenchError(f"no study {name!r} in {storage.url}; studies there: {names or 'none'}") from None
    if SPEC_ATTR not in study.user_attrs:
        raise MbsbenchError(f"study {name!r} in {storage.url} was not created by mbsbench (python -m studies create)")
    return study, StudySpec.from_json(study.user_attrs[SPEC_ATTR])


def _study_run(spec: StudySpec, study) -> str | None:
    """The study's one MLflow run (created under the lock, its id kept in the study)."""
    if not spec.tracking_uri:
        return None
    known = study.user_attrs.get("mlflow_run_id")
    if known:
        return known

    tags = provenance_tags(device_name("cpu")) | {
        "objective": spec.objective, "objective_metrics": ",".join(spec.metrics),
        "objective_directions": ",".join(spec.directions), "sampler": spec.sampler, "kind": spec.kind}
    params = {"base": spec.base, "objective": spec.objective, "sampler": spec.sampler, "kind": spec.kind,
              "space": ",".join(k.name for k in spec.knobs), "trials": spec.trials}
    params |= {f"setting_{k}": v for k, v in asdict(spec.settings).items()}
    if spec.kind == "ablation":
        params |= {f"ablation_{k}": v for k, v in spec.ablation.items()}
    run_id = record_study(spec.tracking_uri, spec.name, params, tags, ablation=spec.kind == "ablation")
    study.set_user_attr("mlflow_run_id", run_id)
    return run_id


def ablation_spec(name: str, request, profile: dict | None, tracking_uri: str | None) -> StudySpec:
    """An ablation as a study: each (variant, seed) of `request` one queued trial that `studies work` trains
    (or, with `profile`, profiles) through bench's normal path and logs as a normal run (create_study queues it)."""
    return StudySpec(name, "ablation_profile" if profile else "ablation", "ablation", request.variants[0],
                     tracking_uri=tracking_uri, ablation={
                         "variants": list(request.variants), "seeds": list(request.seeds),
                         "request": request.to_dict(), "profile": profile})
