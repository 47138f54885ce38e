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

from bench.console import progress, warn
from bench.data.datasets import Dataset, check_spec, open_dataset
from bench.devices import device_name, parameter_dtype
from bench.interrupts import add_kept
from bench.invocation import command_tags
from bench.profiling.macs import count_macs
from bench.profiling.params import check_weights_fit
from bench.quality.evaluate import Evaluation, evaluate, write_evaluation
from bench.tracking.records import RunRecord, mlflow_errors, parent_run, summary_means
from bench.tracking.schema import EXPERIMENTS, METRIC_LABELS
from bench.tracking.store import end_status, experiment_runs, provenance_tags
from bench.training.checkpoint import check_same_model, load_checkpoint, read_checkpoint, write_atomically
from bench.training.request import (
    BUDGET,
    RunContext,
    RunRequest,
    TrainSettings,
    check_run_folder,
    preflight,
    run_folder,
    train_settings,
)
from bench.training.run_lock import hold_run_folders
from bench.training.trainer import Trainer, TrainObserver, TrainResult, check_same_math
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
    for seed in request.seeds:
        train_settings(request, request.data, seed, world)
    configs = preflight(request, RunContext(device, tracking_uri), check_spec)
    dataset = open_splits(request.data)
    check_batch(train_settings(request, dataset.spec, request.seeds[0], world).batch, dataset)
    resumable(request, configs, dataset, world)


def check_batch(batch: int, dataset: Dataset) -> None:
    """A batch is never silently cut to the training split."""
    if batch > len(dataset.split("train")):
        raise MbsbenchError(f"--batch {batch}: the training split of {dataset.spec} has {len(dataset.split('train'))}"
                            " utterances; expected a batch no larger")


def run_experiment(request: RunRequest, context: RunContext) -> ExperimentOutcome:
    """Train and evaluate each (variant, seed), log each run, and return the outcomes."""
    configs = preflight(request, context, check_spec)
    for name, cfg in configs.items():
        check_weights_fit(name, cfg, context.device)
    dataset = open_splits(request.data)
    check_batch(train_settings(request, dataset.spec, request.seeds[0], context.ranks.world).batch, dataset)
    earlier = finished_before(request, context, configs, dataset) if request.skip_finished else {}
    todo = [(name, cfg, seed) for name, cfg in configs.items() for seed in request.seeds if (name, seed) not in earlier]
    held = [run_folder(request, name, seed) for name, _, seed in todo] if context.ranks.main else []
    with hold_run_folders(held):  # before the folders are looked at: two runs never share one
        for name, _, seed in todo:  # a folder that holds a run with other settings is not overwritten either
            check_run_folder(replace(request, skip_finished=False), name, seed)
        outcomes, noisy = _run_todo(request, context, dataset, todo)
    return ExperimentOutcome(noisy, outcomes, list(earlier.values()), context.tracking_uri)


def _run_todo(request: RunRequest, context: RunContext, dataset: Dataset,
              todo: list[tuple[str, ModelConfig, int]]) -> tuple[list[RunOutcome], Evaluation | None]:
    """Score the noisy input, then train and score each (variant, seed) under the ablation's parent run."""
    resumed = resumable(request, {name: cfg for name, cfg, _ in todo}, dataset, context.ranks.world)
    noisy = evaluate(dataset, "test", None, workers=context.workers)[0] if context.ranks.main else None
    outcomes = []
    parent = _parent(request, context, dataset, resumed) if todo else nullcontext(None)
    with parent as parent_id:
        for name, cfg, seed in todo:
            saved = resumed.get((name, seed), {})
            outcomes.append(_one(request, context, name, cfg, seed, dataset, noisy, parent_id, saved))
    return outcomes, noisy


def run_key(cfg: ModelConfig, settings: TrainSettings, dataset: Dataset) -> str:
    """What makes two runs the same run: config, recipe and budget (seed included), data."""
    text = json.dumps({"config": cfg.to_dict(), "settings": asdict(settings), "data": dataset.fingerprint},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finished_before(request: RunRequest, context: RunContext, configs: dict[str, ModelConfig],
                    dataset: Dataset) -> dict[tuple, dict]:
    """(variant, seed) pairs already FINISHED with this key in the store, or in their run folder when untracked."""
    done = {}
    for name, cfg in configs.items():
        for seed in request.seeds:
            key = run_key(cfg, train_settings(request, dataset.spec, seed, context.ranks.world), dataset)
            row = _finished_in_store(context.tracking_uri, key) if context.tracking_uri else \
                _finished_in_folder(run_folder(request, name, seed), key)
            if row is not None:
                done[name, seed] = {"variant": name, "seed": seed} | row
    return done


def _finished_in_store(uri: str, key: str) -> dict | None:
    runs = experiment_runs(uri, EXPERIMENTS["run"], f"tags.`mbsbench.run_key` = '{key}' and "
                                                    "attributes.status = 'FINISHED'")
    if runs.empty:
        return None
    run = runs.iloc[0]
    figures = {c[len("metrics."):]: run[c] for c in runs.columns if c.startswith("metrics.")}
    return {"status": f"finished earlier (run {run['run_id']})", "run_id": run["run_id"]} | figures


def _finished_in_folder(folder: Path, key: str) -> dict | None:
    path = folder / "result.json"
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    if row.get("run_key") != key or row.get("status") != "ok":
        return None
    return row | {"status": f"finished earlier ({path})"}


def resumable(request: RunRequest, configs: dict[str, ModelConfig], dataset: Dataset,
              world: int = 1) -> dict[tuple, dict]:
    """With --resume, each run's last.pt checked against this command (model, recipe, data) before any work;
    what each remembers (its MLflow run and parent) by (variant, seed)."""
    resumed = {}
    for name, cfg in configs.items():
        for seed in [seed for seed in request.seeds if request.resumes(name, seed)]:
            path = run_folder(request, name, seed) / "last.pt"
            data = read_checkpoint(path)
            check_same_model(data, path, cfg, name)
            check_same_math(data, path, train_settings(request, dataset.spec, seed, world), dataset.fingerprint)
            resumed[name, seed] = {k: v for k, v in data.items() if k.startswith("run_")}
    return resumed


def _parent(request: RunRequest, context: RunContext, dataset: Dataset, resumed: dict):
    if request.parent_run_id or not (context.tracking_uri and request.parent_name):
        return nullcontext(request.parent_run_id if context.tracking_uri else None)

    tags = provenance_tags(device_name(context.device)) | {"task": "ablate", "data_fingerprint": dataset.fingerprint}
    known = next((saved["run_mlflow_parent"] for saved in resumed.values() if saved.get("run_mlflow_parent")), None)
    return parent_run(context.tracking_uri, request.parent_name, tags, known)


class ProgressBar(TrainObserver):
    """A tqdm bar of the steps with the last loss."""

    def __init__(self, bar):
        self.bar = bar

    def step(self, step: int, loss: float) -> None:
        self.bar.n = step
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        self.bar.update(0)


def _one(request: RunRequest, context: RunContext, name: str, cfg: ModelConfig, seed: int, dataset: Dataset,
         noisy: Evaluation, parent_id: str | None, saved: dict) -> RunOutcome:
    settings = train_settings(request, dataset.spec, seed, context.ranks.world)
    folder = run_folder(request, name, seed)
    if request.overwrite and folder.exists() and context.ranks.main:
        shutil.rmtree(folder)
    torch.manual_seed(settings.seed)
    model = build_model(cfg)
    trainer = Trainer(model, cfg, name, dataset.split("train"), dataset.split("val"), settings, folder,
                      context.device, dataset.fingerprint, context.ranks, context.workers)
    key = run_key(cfg, settings, dataset)
    record = _open_record(context, trainer, name, seed, dataset, parent_id, saved.get("run_mlflow_id"), key,
                          request.recipe)
    try:
        outcome = _train_and_score(trainer, name, cfg, seed, dataset, noisy, context,
                                   request.resumes(name, seed), record, key)
    except (KeyboardInterrupt, Exception) as err:
        if record is not None:
            record.end(*end_status(err))  # KILLED for an interrupt, FAILED with the error's line
            if isinstance(err, KeyboardInterrupt):
                add_kept(err, f"MLflow run {record.run_id} KILLED with its curves so far")
        raise
    if record is not None and record.error:
        raise MbsbenchError(f"MLflow logging of {name} seed {seed} failed ({record.error}); its results are in "
                            f"{folder / 'result.json'} and {folder / 'test'}")
    return outcome


def _train_and_score(trainer: Trainer, name: str, cfg: ModelConfig, seed: int, dataset: Dataset,
                     noisy: Evaluation, context: RunContext, resume: bool, record, key: str) -> RunOutcome:
    total = None if trainer.total_steps == float("inf") else int(trainer.total_steps)
    main = context.ranks.main
    with progress(total if main else 0, f"train {name} seed {seed}", "step") as bar:
        trainer.observers += [ProgressBar(bar), *([record] if record is not None else [])] if main else []
        result = trainer.run(resume)
    if not main:  # rank 0 scores, writes and logs; the others are done
        return RunOutcome(name, seed, result, None, {})
    evaluation, audio = None, []
    if result.best_path.is_file():
        load_checkpoint(result.best_path, cfg, name, trainer.model)
        evaluation, audio = evaluate(dataset, "test", trainer.model, context.device, with_pcs=True,
                                     workers=context.workers, keep_audio=3, precision=trainer.s.precision)
    outcome = RunOutcome(name, seed, result, evaluation, run_figures(cfg, result, evaluation, noisy),
                         settings=trainer.s, folder=trainer.folder)
    paths = write_evaluation(evaluation, trainer.folder / "test") if evaluation else {}
    outcome.run_id = record.run_id if record is not None else ""
    write_result(trainer.folder / "result.json", outcome, key)
    if record is not None:
        tags = {"status": result.status, "reason": result.reason[:500]}
        record.finish(outcome.figures, tags, list(paths.values()), result.best_path, audio)
    return outcome


def _open_record(context: RunContext, trainer: Trainer, name: str, seed: int, dataset: Dataset,
                 parent_id: str | None, known: str | None, key: str, recipe: str):
    """The run's MLflow record: the checkpoint's own run (`known`) when resuming, else a new one; None untracked."""
    if not context.tracking_uri or not context.ranks.main:
        return None
    budget = {"train_budget": " ".join(f"{k}={getattr(trainer.s, k)}" for k in BUDGET)}
    try:
        if known:
            record = RunRecord.resume(context.tracking_uri, known, budget | command_tags())  # the budget may grow
        else:
            record = RunRecord.start(context.tracking_uri, f"run {name} seed {seed}", run_tags(name, seed, dataset,
                                     context.device) | budget | {"mbsbench.run_key": key},
                                     run_params(trainer.cfg, trainer.s, dataset, context.device, recipe), parent_id)
    except mlflow_errors() as err:  # the store went away since it was checked: the training goes on untracked
        warn(f"MLflow logging failed ({error_line(err, 160)}); {name} seed {seed} trains untracked, its results "
             f"kept in {trainer.folder}")
        return None
    trainer.saved_extra |= {"run_mlflow_id": record.run_id, "run_mlflow_parent": parent_id or ""}
    return record


def run_tags(name: str, seed: int, dataset: Dataset, device: str) -> dict:
    return provenance_tags(device_name(device)) | {"task": "run", "variant": name, "seed": str(seed),
                                                   "data_fingerprint": dataset.fingerprint}


def run_params(cfg: ModelConfig, settings: TrainSettings, dataset: Dataset, device: str, recipe: str) -> dict:
    """The config and every setting that fixes the math (the budget is a tag: it may change on --resume)."""
    train = {f"train_{k}": v for k, v in asdict(settings).items() if k not in BUDGET}
    train |= {"train_batch_per_rank": settings.batch // settings.world_size, "train_recipe": recipe}
    scan = resolve_scan(cfg, torch.device(device), parameter_dtype(settings.precision))
    return cfg.to_dict() | train | {"data": dataset.spec, "scan_resolved": scan}


def run_figures(cfg: ModelConfig, result: TrainResult, evaluation: Evaluation | None, noisy: Evaluation) -> dict:
    """The flat figures of one run: params, MACs, training outcome, test and noisy scores."""
    params = count_params(cfg)
    figures = {"params": params, "params_m": params / 1e6}
    figures |= count_macs(build_model(cfg).eval(), cfg, 1.0, "cpu")
    figures |= {"train_steps": result.steps, "train_epochs": result.epochs, "train_minutes": result.seconds / 60,
                "train_segments": len(result.segments), "best_step": result.best_step,
                "best_val_loss": result.best_val_loss}
    return figures | summary_means(evaluation) | summary_means(noisy, "noisy_")


def write_result(path: Path, outcome: RunOutcome, key: str) -> None:
    """The run's summary as JSON in its folder: there whether or not the tracking store took it."""
    row = outcome.row() | {"run_id": outcome.run_id, "run_key": key}
    write_atomically(path, json.dumps(row, indent=2, default=str).encode())
