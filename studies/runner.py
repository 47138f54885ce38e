"""Studies on Optuna storage: create or resume, enqueue untried grid points, run K worker processes."""

import json
import math
import multiprocessing
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.console import verbosity
from studies.objectives import OBJECTIVES, ObjectiveSettings, TrialFailedError, evaluate_config
from studies.space import Knob, check_values, grid
from variants.config import ModelConfig
from variants.errors import MbsbenchError
from variants.registry import build_config

DEFAULT_STORAGE = "studies.log"  # an Optuna journal file in the working directory


@dataclass(frozen=True)
class StudySpec:
    """Everything a worker needs to rebuild the study and its objective."""

    name: str
    storage: str
    base: str
    objective: str
    knobs: tuple[Knob, ...]
    settings: ObjectiveSettings
    tracking_uri: str | None = None


def make_storage(url: str | None):
    """A journal file (default, or any path), or an RDB URL (sqlite:///, postgresql://, mysql://)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    url = url or DEFAULT_STORAGE
    if "://" not in url:
        folder = Path(url).expanduser().resolve().parent
        if not folder.is_dir():
            raise MbsbenchError(f"--storage {url}: folder {folder} does not exist")
        return JournalStorage(JournalFileBackend(str(Path(url).expanduser())))
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as err:  # sqlalchemy raises many kinds for a bad or unreachable URL
        message = f"--storage {url}: unreachable ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        raise MbsbenchError(message) from None


def open_study(spec: StudySpec, create: bool = True):
    """Load (or create) the study; a study of another objective under the same name is an error."""
    import optuna

    storage = make_storage(spec.storage)
    directions = list(OBJECTIVES[spec.objective][1])
    if not create:
        try:
            return optuna.load_study(study_name=spec.name, storage=storage)
        except KeyError:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
            raise MbsbenchError(f"no study {spec.name!r} in {spec.storage}; studies there: {names or 'none'}") from None
    study = optuna.create_study(study_name=spec.name, storage=storage, directions=directions, load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=spec.settings.seed))
    known = study.user_attrs.get("objective")
    if known and known != spec.objective:
        raise MbsbenchError(f"study {spec.name!r} optimises {known!r}, not {spec.objective!r}; pick another name")
    study.set_user_attr("objective", spec.objective)
    study.set_user_attr("base", spec.base)
    return study


def tried(study) -> list[dict]:
    """Parameters of every trial so far, whatever its state."""
    return [dict(t.params) or dict(t.system_attrs.get("fixed_params", {})) for t in study.get_trials(deepcopy=False)]


def enqueue_untried(study, knobs: tuple[Knob, ...], count: int, seed: int) -> int:
    """Queue up to `count` grid points never tried in this study (discrete spaces): no trial repeats."""
    seen = tried(study)
    fresh = [point for point in grid(list(knobs)) if point not in seen]
    random.Random(f"{seed}-{len(seen)}").shuffle(fresh)
    for point in fresh[:count]:
        study.enqueue_trial(point)
    return min(count, len(fresh))


def objective_for(spec: StudySpec, parent_run: str | None):
    """The Optuna objective: suggest, build the config, measure, log a child run; failures recorded."""
    base = build_config(spec.base)

    def objective(trial):
        params = {knob.name: knob.suggest(trial) for knob in spec.knobs}
        cfg: ModelConfig = check_values(base, params)
        try:
            values = evaluate_config(spec.objective, cfg, spec.settings, trial)
        except TrialFailedError as err:
            trial.set_user_attr("fail_reason", str(err)[:500])
            _log_trial(spec, parent_run, trial.number, cfg, params, None, str(err))
            return tuple(math.nan for _ in OBJECTIVES[spec.objective][0])
        _log_trial(spec, parent_run, trial.number, cfg, params, values, "")
        return values if len(values) > 1 else values[0]

    return objective


def _log_trial(spec, parent, number, cfg, params, values, reason) -> None:
    if not (spec.tracking_uri and parent):
        return
    from bench.devices import device_name
    from bench.tracking.records import record_trial
    from bench.tracking.store import provenance_tags

    metrics = dict(zip(OBJECTIVES[spec.objective][0], values)) if values else None
    record_trial(spec.tracking_uri, spec.name, parent, number,
                 cfg.to_dict() | {f"knob_{k}": v for k, v in params.items()}, metrics,
                 provenance_tags(device_name(spec.settings.device)), reason)


def _worker(spec: StudySpec, trials: int, parent_run: str | None, verbosity: int = 0) -> None:
    import optuna

    from bench.console import library_log_level, set_verbosity

    set_verbosity(verbosity)
    optuna.logging.set_verbosity(library_log_level())
    study = open_study(spec)
    study.optimize(objective_for(spec, parent_run), n_trials=trials, catch=(MemoryError, RuntimeError))


def run_study(spec: StudySpec, trials: int, workers: int = 1) -> dict:
    """Add `trials` trials to the study with `workers` processes on the same storage; returns counts."""
    if trials < 1 or workers < 1:
        raise MbsbenchError(f"--trials {trials} / --workers {workers}: expected positive integers")
    study = open_study(spec)
    before = len(study.trials)
    if all(knob.discrete for knob in spec.knobs):
        trials = enqueue_untried(study, spec.knobs, trials, spec.settings.seed)
        if trials == 0:
            raise MbsbenchError(f"study {spec.name!r} has tried every point of this space ({before} trials)")
    parent = _parent_run(spec, study)
    shares = [trials // workers + (i < trials % workers) for i in range(workers)]
    if workers == 1:
        _worker(spec, trials, parent, verbosity())
    else:
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=_worker, args=(spec, n, parent, verbosity())) for n in shares if n]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    study = open_study(spec, create=False)
    record_importances(spec, study)
    return {"before": before, "added": len(study.trials) - before, "total": len(study.trials)}


def _parent_run(spec: StudySpec, study) -> str | None:
    """The study's MLflow run (created once, its id kept in the study's attributes)."""
    if not spec.tracking_uri:
        return None
    known = study.user_attrs.get("mlflow_run_id")
    if known:
        return known
    from bench.devices import device_name
    from bench.tracking.records import record_study
    from bench.tracking.store import provenance_tags

    metrics, directions = OBJECTIVES[spec.objective]
    tags = provenance_tags(device_name(spec.settings.device)) | {
        "objective": spec.objective, "objective_metrics": ",".join(metrics),
        "objective_directions": ",".join(directions)}
    params = {"base": spec.base, "objective": spec.objective, "space": ",".join(k.name for k in spec.knobs)}
    run_id = record_study(spec.tracking_uri, spec.name, params | {f"setting_{k}": v for k, v in
                                                                  asdict(spec.settings).items()}, tags)
    study.set_user_attr("mlflow_run_id", run_id)
    return run_id


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
    importances = study_importances(study)
    if spec.tracking_uri and run_id and importances:
        from bench.tracking.records import record_study_importances

        record_study_importances(spec.tracking_uri, run_id, importances)
