"""run_experiment: train variants x seeds on a budget, score the test split, record each run as it goes.

The one function `bench run`, `bench ablate`, studies and tests call: it takes a RunRequest (what
to train) and a RunContext (where: device, tracking store, metric processes), never parsed flags.
Every input is checked before the first step (request.preflight); each (variant, seed) has its
MLflow run from its first step, and its results in its run folder (result.json) whatever happens
to the store.
"""

import hashlib
import json
import math
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from bench.compiling import length_is_symbolic
from bench.console import progress, warn
from bench.data.datasets import Dataset, check_spec, open_dataset
from bench.devices import device_name, parameter_dtype
from bench.interrupts import add_kept
from bench.invocation import command_tags
from bench.profiling.macs import count_macs
from bench.profiling.params import check_weights_fit
from bench.quality.evaluate import Evaluation, evaluate, write_evaluation
from bench.tracking.records import RunRecord, finished_run, mlflow_errors, parent_run, summary_means
from bench.tracking.schema import METRIC_LABELS
from bench.tracking.store import end_status, provenance_tags
from bench.training.checkpoint import check_same_model, load_checkpoint, read_checkpoint, write_atomically
from bench.training.request import (
    BUDGET,
    PlannedRun,
    RunContext,
    RunRequest,
    TrainSettings,
    check_run_folder,
    preflight,
    run_folder,
    train_settings,
)
from bench.training.run_lock import hold_run_folders
from bench.training.trainer import ProgressBar, Trainer, TrainObserver, TrainResult, check_same_math
from variants.config import ModelConfig
from variants.errors import MbsbenchError, error_line
from variants.layers import resolve_scan
from variants.registry import build_model, count_params

__all__ = ["ExperimentOutcome", "RunContext", "RunOutcome", "RunRequest", "run_experiment"]


@dataclass
class RunOutcome:
    """One (variant, seed): its training result, test evaluation, flat figures and run id."""

    variant: str
    seed: int
    train: TrainResult
    evaluation: Evaluation | None
    figures: dict
    run_id: str = ""
    settings: TrainSettings | None = None
    folder: Path | None = None

    def row(self) -> dict:
        status = self.train.status if self.evaluation else f"{self.train.status} (no checkpoint)"
        return {"variant": self.variant, "seed": self.seed, "status": status, "reason": self.train.reason} | \
            self.figures


@dataclass
class ExperimentOutcome:
    """The noisy input's scores, every (variant, seed) trained now, and the rows of those finished before."""

    noisy: Evaluation
    runs: list[RunOutcome]
    earlier: list[dict] = field(default_factory=list)
    tracking_uri: str | None = None

    def rows(self) -> list[dict]:
        noisy = {"variant": "noisy input", "seed": "-", "status": "ok"} | summary_means(self.noisy)
        return [noisy] + self.earlier + [run.row() for run in self.runs]

    def closing(self) -> tuple[list[str], list[str]]:
        """(lines, warnings): each run's recipe and where its results went, the next command; a warning for a
        run that trained on less than one epoch or scored below the noisy input."""
        lines, warnings = [], []
        for run in self.runs:
            label = f"{run.variant} seed {run.seed}"
            if run.settings is not None:
                s, t = run.settings, run.train
                lines.append(f"{label}: {t.steps} steps of batch {s.batch} x {s.crop_seconds:g} s crops = "
                             f"{t.epochs:.2f} epochs, {t.seconds / 60:.1f} min; results in {run.folder}"
                             + (f", MLflow run {run.run_id} in {self.tracking_uri}" if run.run_id else ""))
                if t.epochs < 1:
                    warnings.append(f"{label} trained on less than one epoch ({t.epochs:.2f}): give it more "
                                    "--steps for scores that say something about the variant")
            figures = run.figures
            worse = [text for m, text in METRIC_LABELS.items()
                     if figures.get(m, math.inf) < figures.get(f"noisy_{m}", -math.inf)]
            if worse:
                warnings.append(f"{label} scores below the noisy input on {', '.join(worse)}")
        if self.tracking_uri and self.runs:
            lines.append(f"next: python -m reports tables --tracking-uri {self.tracking_uri}")
        return lines, warnings


def open_splits(spec: str) -> Dataset:
    """The dataset, with an error when a split training needs is empty."""
    dataset = open_dataset(spec)
    for split in ("train", "val", "test"):
        if not dataset.split(split):
            raise MbsbenchError(f"dataset {dataset.spec!r}: the {split} split is empty")
    return dataset


def check_before_launch(request: RunRequest, tracking_uri: str | None, device: str, world: int) -> None:
    """What each of `world` ranks would check, checked once by their launcher: the request, the store, the
    devices, the data and batch, each checkpoint to resume."""
    if device.startswith("cuda") and torch.cuda.device_count() < world:
        raise MbsbenchError(f"--nproc {world}: a GPU per rank, and this machine has {torch.cuda.device_count()}")
    for seed in request.seeds:  # the world's own checks (a batch that divides), before the data is opened
        train_settings(request, request.data, seed, world)
    configs = preflight(request, RunContext(device, tracking_uri), check_spec)
    dataset = open_splits(request.data)
    planned = plan_runs(request, configs, dataset, world)
    check_batch(planned[0].settings.batch, dataset)
    for run in planned:
        remember_checkpoint(run, dataset)


def check_batch(batch: int, dataset: Dataset) -> None:
    """A batch is never silently cut to the training split."""
    if batch > len(dataset.split("train")):
        raise MbsbenchError(f"--batch {batch}: the training split of {dataset.spec} has {len(dataset.split('train'))}"
                            " utterances; expected a batch no larger")


def plan_runs(request: RunRequest, configs: dict[str, ModelConfig], dataset: Dataset, world: int) -> list[PlannedRun]:
    """Every (variant, seed) of the request resolved once: its train settings, folder and run key."""
    planned = []
    for name, cfg in configs.items():
        for seed in request.seeds:
            settings = train_settings(request, dataset.spec, seed, world)
            planned.append(PlannedRun(name, cfg, settings, run_folder(request, name, seed),
                                      run_key(cfg, settings, dataset), request.recipe, request.resumes(name, seed),
                                      request.overwrite))
    return planned


def run_experiment(request: RunRequest, context: RunContext) -> ExperimentOutcome:
    """Train and evaluate each (variant, seed), log each run, and return the outcomes."""
    configs = preflight(request, context, check_spec)
    check_weights_fit(configs, context.device)
    dataset = open_splits(request.data)
    planned = plan_runs(request, configs, dataset, context.ranks.world)
    check_batch(planned[0].settings.batch, dataset)
    earlier = finished_before(planned, context) if request.skip_finished else {}
    todo = [run for run in planned if (run.variant, run.seed) not in earlier]
    with hold_run_folders([run.folder for run in todo] if context.ranks.main else []):  # before they are read
        for run in todo:  # a folder that holds a run with other settings is not overwritten either
            check_run_folder(replace(request, skip_finished=False), run.variant, run.seed)
        todo = [remember_checkpoint(run, dataset) for run in todo]
        outcomes, noisy = _run_todo(request, context, dataset, todo)
    return ExperimentOutcome(noisy, outcomes, list(earlier.values()), context.tracking_uri)


@dataclass(frozen=True)
class Shared:
    """What every run of one experiment shares: the data, the noisy input's scores, the ablation's parent run,
    the split its best checkpoints are scored on (a study's: 'val', never the test split) and observers of every
    training (a study's pruner)."""

    dataset: Dataset
    noisy: Evaluation | None = None
    parent_id: str | None = None
    split: str = "test"
    with_pcs: bool = True  # the scores of the PCS-processed output too (a study's objective needs none)
    dnsmos: bool = False  # DNSMOS scores too
    observers: tuple[TrainObserver, ...] = ()


def _run_todo(request: RunRequest, context: RunContext, dataset: Dataset,
              todo: list[PlannedRun]) -> tuple[list[RunOutcome], Evaluation | None]:
    """Score the noisy input, then train and score each planned run under the ablation's parent run."""
    noisy = evaluate(dataset, "test", None, workers=context.workers, dnsmos=request.dnsmos)[0] \
        if context.ranks.main else None
    parent = _parent(request, context, dataset, todo) if todo else nullcontext(None)
    with parent as parent_id:
        shared = Shared(dataset, noisy, parent_id, dnsmos=request.dnsmos)
        return [train_one(run, context, shared) for run in todo], noisy


def run_key(cfg: ModelConfig, settings: TrainSettings, dataset: Dataset) -> str:
    """What makes two runs the same run: config, recipe and budget (seed included), data."""
    text = json.dumps({"config": cfg.to_dict(), "settings": asdict(settings), "data": dataset.fingerprint},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finished_before(planned: list[PlannedRun], context: RunContext) -> dict[tuple, dict]:
    """(variant, seed) pairs already FINISHED with this key in the store, or in their run folder when untracked."""
    done = {}
    for run in planned:
        row = _finished_in_store(context.tracking_uri, run.key) if context.tracking_uri else \
            _finished_in_folder(run.folder, run.key)
        if row is not None:
            done[run.variant, run.seed] = {"variant": run.variant, "seed": run.seed} | row
    return done


def _finished_in_store(uri: str, key: str) -> dict | None:
    found = finished_run(uri, key)
    return None if found is None else {"status": f"finished earlier (run {found['run_id']})"} | found


def _finished_in_folder(folder: Path, key: str) -> dict | None:
    path = folder / "result.json"
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    if row.get("run_key") != key or row.get("status") != "ok":
        return None
    return row | {"status": f"finished earlier ({path})"}


def remember_checkpoint(run: PlannedRun, dataset: Dataset) -> PlannedRun:
    """A resumed run's last.pt checked against its plan (model, recipe, data) before any work; the plan with what
    the checkpoint remembers (its MLflow run and parent)."""
    if not run.resumes:
        return run
    path = run.folder / "last.pt"
    data = read_checkpoint(path)
    check_same_model(data, path, run.config, run.variant)
    check_same_math(data, path, run.settings, dataset.fingerprint)
    return replace(run, remembered={k: v for k, v in data.items() if k.startswith("run_")})


def _parent(request: RunRequest, context: RunContext, dataset: Dataset, todo: list[PlannedRun]):
    if request.parent_run_id or not (context.tracking_uri and request.parent_name):
        return nullcontext(request.parent_run_id if context.tracking_uri else None)

    tags = provenance_tags(device_name(context.device)) | {"task": "ablate", "data_fingerprint": dataset.fingerprint}
    known = next((run.remembered["run_mlflow_parent"] for run in todo if run.remembered.get("run_mlflow_parent")),
                 None)
    return parent_run(context.tracking_uri, request.parent_name, tags, known)


@dataclass
class Training:
    """A planned run on its way: its trainer and its MLflow record (None when untracked)."""

    run: PlannedRun
    trainer: Trainer
    record: RunRecord | None = None


def train_one(run: PlannedRun, context: RunContext, shared: Shared) -> RunOutcome:
    """Train one planned run, score its best checkpoint on the test split, write and log the results."""
    if run.overwrite and run.folder.exists() and context.ranks.main:
        shutil.rmtree(run.folder)
    torch.manual_seed(run.seed)
    trainer = Trainer(build_model(run.config), run, shared.dataset, context)
    training = Training(run, trainer, _open_record(run, context, trainer, shared))
    record = training.record
    try:
        outcome = _train_and_score(training, context, shared)
    except (KeyboardInterrupt, Exception) as err:
        if record is not None:
            record.end(*end_status(err))  # KILLED for an interrupt, FAILED with the error's line
            if isinstance(err, KeyboardInterrupt):
                add_kept(err, f"MLflow run {record.run_id} KILLED with its curves so far")
        raise
    if record is not None and record.error:
        raise MbsbenchError(f"MLflow logging of {run.label} failed ({record.error}); its results are in "
                            f"{run.folder / 'result.json'} and {run.folder / 'test'}")
    return outcome


def _train_and_score(training: Training, context: RunContext, shared: Shared) -> RunOutcome:
    run, trainer, record = training.run, training.trainer, training.record
    total = None if trainer.total_steps == float("inf") else int(trainer.total_steps)
    main = context.ranks.main
    with progress(total if main else 0, f"train {run.label}", "step") as bar:
        trainer.observers += [*shared.observers, ProgressBar(bar), *([record] if record is not None else [])] \
            if main else []
        result = trainer.run(run.resumes)
    if not main:  # rank 0 scores, writes and logs; the others are done
        return RunOutcome(run.variant, run.seed, result, None, {})
    evaluation, audio = None, []
    if result.best_path.is_file():
        load_checkpoint(result.best_path, run.config, run.variant, trainer.model)
        evaluation, audio = evaluate(shared.dataset, shared.split, trainer.model, context.device,
                                     with_pcs=shared.with_pcs, workers=context.workers, keep_audio=3,
                                     precision=run.settings.precision, dnsmos=shared.dnsmos)
    outcome = RunOutcome(run.variant, run.seed, result, evaluation,
                         run_figures(run.config, result, evaluation, shared.noisy), settings=run.settings,
                         folder=run.folder)
    paths = write_evaluation(evaluation, run.folder / shared.split) if evaluation else {}
    outcome.run_id = record.run_id if record is not None else ""
    write_result(run.folder / "result.json", outcome, run.key)
    if record is not None:
        tags = {"status": result.status, "reason": result.reason[:500]} | (evaluation.scorers if evaluation else {})
        record.finish(outcome.figures, tags, list(paths.values()), result.best_path, audio)
    return outcome


def _open_record(run: PlannedRun, context: RunContext, trainer: Trainer, shared: Shared) -> RunRecord | None:
    """The run's MLflow record: the checkpoint's own run when resuming, else a new one; None untracked."""
    if not context.tracking_uri or not context.ranks.main:
        return None
    budget = {"train_budget": " ".join(f"{k}={getattr(run.settings, k)}" for k in BUDGET)}
    known = run.remembered.get("run_mlflow_id")
    try:
        if known:
            record = RunRecord.resume(context.tracking_uri, known, budget | command_tags())  # the budget may grow
        else:
            tags = run_tags(run, shared.dataset, context.device) | budget | {"mbsbench.run_key": run.key}
            record = RunRecord.start(context.tracking_uri, f"run {run.label}", tags,
                                     run_params(run, shared.dataset, context.device), shared.parent_id)
    except mlflow_errors() as err:  # the store went away since it was checked: the training goes on untracked
        warn(f"MLflow logging failed ({error_line(err, 160)}); {run.label} trains untracked, its results kept in "
             f"{run.folder}")
        return None
    trainer.saved_extra |= {"run_mlflow_id": record.run_id, "run_mlflow_parent": shared.parent_id or ""}
    return record


def run_tags(run: PlannedRun, dataset: Dataset, device: str) -> dict:
    return provenance_tags(device_name(device)) | {"task": "run", "variant": run.variant, "seed": str(run.seed),
                                                   "data_fingerprint": dataset.fingerprint}


def run_params(run: PlannedRun, dataset: Dataset, device: str) -> dict:
    """The config and every setting that fixes the math (the budget is a tag: it may change on --resume)."""
    settings = run.settings
    train = {f"train_{k}": v for k, v in asdict(settings).items() if k not in BUDGET}
    train |= {"train_batch_per_rank": settings.batch // settings.world_size, "train_recipe": run.recipe}
    scan = resolve_scan(run.config, torch.device(device), parameter_dtype(settings.precision))
    compiled = {"validation_compiled": bool(settings.compile) and length_is_symbolic(scan)}
    return run.config.to_dict() | train | {"data": dataset.spec, "scan_resolved": scan} | compiled


def run_figures(cfg: ModelConfig, result: TrainResult, evaluation: Evaluation | None, noisy: Evaluation) -> dict:
    """The flat figures of one run: params, MACs, training outcome, test and noisy scores."""
    params = count_params(cfg)
    figures = {"params": params, "params_m": params / 1e6}
    figures |= count_macs(build_model(cfg).eval(), cfg, 1.0, "cpu")
    figures |= {"train_steps": result.steps, "train_epochs": result.epochs, "train_minutes": result.seconds / 60,
                "train_segments": len(result.segments), "train_first_step_s": result.first_step_s,
                "train_compiled_graphs": result.compiled_graphs,
                "best_step": result.best_step,
                "best_val_loss": result.best_val_loss}
    return figures | summary_means(evaluation) | summary_means(noisy, "noisy_")


def write_result(path: Path, outcome: RunOutcome, key: str) -> None:
    """The run's summary as JSON in its folder: there whether or not the tracking store took it."""
    row = outcome.row() | {"run_id": outcome.run_id, "run_key": key}
    write_atomically(path, json.dumps(row, indent=2, default=str).encode())
