"""run_experiment: train variants x seeds on a budget, score the test split, record each run as it goes.

The one function `bench run`, `bench ablate`, studies and tests call: it takes a RunRequest (what
to train) and a RunContext (where: device, tracking store, metric processes), never parsed flags.
Every input is checked before the first step (request.preflight); each (variant, seed) has its
MLflow run from its first step, and its results in its run folder (result.json) whatever happens
to the store.
"""

import json
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.console import progress
from bench.data.datasets import Dataset, check_spec, open_dataset
from bench.devices import device_name
from bench.interrupts import add_kept
from bench.quality.evaluate import Evaluation, evaluate, write_evaluation
from bench.training.checkpoint import check_same_model, load_checkpoint, read_checkpoint
from bench.training.request import (
    BUDGET,
    RunContext,
    RunRequest,
    TrainSettings,
    preflight,
    run_folder,
    train_settings,
)
from bench.training.trainer import Trainer, TrainObserver, TrainResult, check_same_math
from variants.config import ModelConfig
from variants.errors import MbsbenchError
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

    def row(self) -> dict:
        status = self.train.status if self.evaluation else f"{self.train.status} (no checkpoint)"
        return {"variant": self.variant, "seed": self.seed, "status": status, "reason": self.train.reason} | \
            self.figures


@dataclass
class ExperimentOutcome:
    """The noisy input's scores and every (variant, seed) outcome."""

    noisy: Evaluation
    runs: list[RunOutcome]

    def rows(self) -> list[dict]:
        from bench.tracking.records import summary_means

        noisy = {"variant": "noisy input", "seed": "-", "status": "ok"} | summary_means(self.noisy)
        return [noisy] + [run.row() for run in self.runs]


def open_splits(spec: str) -> Dataset:
    """The dataset, with an error when a split training needs is empty."""
    dataset = open_dataset(spec)
    for split in ("train", "val", "test"):
        if not dataset.split(split):
            raise MbsbenchError(f"dataset {dataset.spec!r}: the {split} split is empty")
    return dataset


def run_experiment(request: RunRequest, context: RunContext) -> ExperimentOutcome:
    """Train and evaluate each (variant, seed), log each run, and return the outcomes."""
    configs = preflight(request, context, check_spec)
    dataset = open_splits(request.data)
    resumed = resumable(request, configs, dataset)
    noisy, _ = evaluate(dataset, "test", None, workers=context.workers)
    outcomes = []
    with _parent(request, context, dataset, resumed) as parent_id:
        for name, cfg in configs.items():
            for seed in request.seeds:
                saved = resumed.get((name, seed), {})
                outcomes.append(_one(request, context, name, cfg, seed, dataset, noisy, parent_id, saved))
    return ExperimentOutcome(noisy, outcomes)


def resumable(request: RunRequest, configs: dict[str, ModelConfig], dataset: Dataset) -> dict[tuple, dict]:
    """With --resume, each run's last.pt checked against this command (model, recipe, data) before any work;
    what each remembers (its MLflow run and parent) by (variant, seed)."""
    if not request.resume:
        return {}
    resumed = {}
    for name, cfg in configs.items():
        for seed in request.seeds:
            path = run_folder(request, name, seed) / "last.pt"
            data = read_checkpoint(path)
            check_same_model(data, path, cfg, name)
            check_same_math(data, path, train_settings(request, dataset.spec, seed), dataset.fingerprint)
            resumed[name, seed] = {k: v for k, v in data.items() if k.startswith("run_")}
    return resumed


def _parent(request: RunRequest, context: RunContext, dataset: Dataset, resumed: dict):
    if not (context.tracking_uri and request.parent_name):
        return nullcontext(None)
    from bench.tracking.records import parent_run
    from bench.tracking.store import provenance_tags

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
    settings = train_settings(request, dataset.spec, seed)
    folder = run_folder(request, name, seed)
    if request.overwrite and folder.exists():
        shutil.rmtree(folder)
    torch.manual_seed(settings.seed)
    model = build_model(cfg)
    trainer = Trainer(model, cfg, name, dataset.split("train"), dataset.split("val"), settings, folder,
                      context.device, dataset.fingerprint)
    record = _open_record(context, trainer, name, seed, dataset, parent_id, saved.get("run_mlflow_id"))
    try:
        outcome = _train_and_score(trainer, name, cfg, seed, dataset, noisy, context, request.resume, record)
    except KeyboardInterrupt as err:
        if record is not None:
            record.end("KILLED", "interrupted (SIGINT or SIGTERM)")
            add_kept(err, f"MLflow run {record.run_id} KILLED with its curves so far")
        raise
    except Exception as err:
        if record is not None:
            record.end("FAILED", f"{type(err).__name__}: {str(err)[:400]}")
        raise
    if record is not None and record.error:
        raise MbsbenchError(f"MLflow logging of {name} seed {seed} failed ({record.error}); its results are in "
                            f"{folder / 'result.json'} and {folder / 'test'}")
    return outcome


def _train_and_score(trainer: Trainer, name: str, cfg: ModelConfig, seed: int, dataset: Dataset,
                     noisy: Evaluation, context: RunContext, resume: bool, record) -> RunOutcome:
    total = None if trainer.total_steps == float("inf") else int(trainer.total_steps)
    with progress(total, f"train {name} seed {seed}", "step") as bar:
        trainer.observers += [ProgressBar(bar), *([record] if record is not None else [])]
        result = trainer.run(resume)
    evaluation, audio = None, []
    if result.best_path.is_file():
        load_checkpoint(result.best_path, cfg, name, trainer.model)
        evaluation, audio = evaluate(dataset, "test", trainer.model, context.device, with_pcs=True,
                                     workers=context.workers, keep_audio=3)
    outcome = RunOutcome(name, seed, result, evaluation, run_figures(cfg, result, evaluation, noisy))
    paths = write_evaluation(evaluation, trainer.folder / "test") if evaluation else {}
    outcome.run_id = record.run_id if record is not None else ""
    write_result(trainer.folder / "result.json", outcome)
    if record is not None:
        tags = {"status": result.status, "reason": result.reason[:500]}
        record.finish(outcome.figures, tags, list(paths.values()), result.best_path, audio)
    return outcome


def _open_record(context: RunContext, trainer: Trainer, name: str, seed: int, dataset: Dataset,
                 parent_id: str | None, known: str | None):
    """The run's MLflow record: the checkpoint's own run (`known`) when resuming, else a new one; None untracked."""
    if not context.tracking_uri:
        return None
    from bench.tracking.records import RunRecord

    budget = {"train_budget": " ".join(f"{k}={getattr(trainer.s, k)}" for k in BUDGET)}
    if known:
        record = RunRecord.resume(context.tracking_uri, known, budget)
    else:
        record = RunRecord.start(context.tracking_uri, f"run {name} seed {seed}",
                                 run_tags(name, seed, dataset, context.device) | budget,
                                 run_params(trainer.cfg, trainer.s, dataset, context.device), parent_id)
    trainer.saved_extra |= {"run_mlflow_id": record.run_id, "run_mlflow_parent": parent_id or ""}
    return record


def run_tags(name: str, seed: int, dataset: Dataset, device: str) -> dict:
    from bench.tracking.store import provenance_tags

    return provenance_tags(device_name(device)) | {"task": "run", "variant": name, "seed": str(seed),
                                                   "data_fingerprint": dataset.fingerprint}


def run_params(cfg: ModelConfig, settings: TrainSettings, dataset: Dataset, device: str) -> dict:
    """The config and every setting that fixes the math (the budget is a tag: it may change on --resume)."""
    train = {f"train_{k}": v for k, v in asdict(settings).items() if k not in BUDGET}
    return cfg.to_dict() | train | {"data": dataset.spec, "scan_resolved": resolve_scan(cfg, torch.device(device))}


def run_figures(cfg: ModelConfig, result: TrainResult, evaluation: Evaluation | None, noisy: Evaluation) -> dict:
    """The flat figures of one run: params, MACs, training outcome, test and noisy scores."""
    from bench.profiling.macs import count_macs
    from bench.tracking.records import summary_means

    params = count_params(cfg)
    figures = {"params": params, "params_m": params / 1e6}
    figures |= count_macs(build_model(cfg).eval(), cfg, 1.0, "cpu")
    figures |= {"train_steps": result.steps, "train_epochs": result.epochs, "train_minutes": result.seconds / 60,
                "train_segments": len(result.segments), "best_step": result.best_step,
                "best_val_loss": result.best_val_loss}
    return figures | summary_means(evaluation) | summary_means(noisy, "noisy_")


def write_result(path: Path, outcome: RunOutcome) -> None:
    """The run's summary as JSON in its folder: there whether or not the tracking store took it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    row = outcome.row() | {"run_id": outcome.run_id}
    path.write_text(json.dumps(row, indent=2, default=str))
