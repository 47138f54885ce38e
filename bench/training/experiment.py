"""run_experiment: train variants x seeds on a budget, score the test split, record each run.

The one function `bench run`, `bench ablate`, studies and tests call: it takes a RunRequest (what
to train) and a RunContext (where: device, tracking store, metric processes), never parsed flags.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bench.console import progress
from bench.data.datasets import Dataset, open_dataset
from bench.devices import device_name
from bench.quality.evaluate import Evaluation, evaluate, write_evaluation
from bench.training.checkpoint import load_checkpoint
from bench.training.trainer import Trainer, TrainResult, TrainSettings
from variants.config import ModelConfig
from variants.errors import MbsbenchError
from variants.layers import resolve_scan
from variants.registry import build_config, build_model, count_params

# on the embedded corpus, bench run trains this long unless told otherwise (fits 10 min here)
SYNTH_BUDGET = {"minutes": 5.0, "batch": 4, "crop_seconds": 1.0, "val_every": 100, "checkpoint_every": 100}
RECIPE_DEFAULTS = {"batch": 6, "crop_seconds": 2.0}  # the reference recipe (MODELS.md)


@dataclass(frozen=True)
class RunRequest:
    """What to train: variants x seeds on a dataset, with the budget and recipe, and where to write."""

    variants: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    data: str = "synth"
    overrides: dict = field(default_factory=dict)  # ModelConfig fields (--set)
    scan: str = "auto"  # the scan to train with; 'keep': each variant's own; overrides['scan'] wins
    epochs: int | None = None
    steps: int | None = None
    minutes: float | None = None
    batch: int | None = None
    crop_seconds: float | None = None
    lr: float = 1e-3
    phase_loss: bool = False
    out: Path = Path("runs")
    resume: bool = False
    parent_name: str | None = None  # an ablation: one parent run over the (variant, seed) runs


@dataclass(frozen=True)
class RunContext:
    """Where the work runs: device, tracking store (None: not tracked), metric processes (0: one per core)."""

    device: str = "cpu"
    tracking_uri: str | None = None
    workers: int = 0


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


def train_settings(request: RunRequest, spec: str, seed: int) -> TrainSettings:
    """Budget from the request; on the synth corpus with no budget given, the SYNTH_BUDGET default."""
    given = {k: getattr(request, k) for k in ("epochs", "steps", "minutes") if getattr(request, k) is not None}
    defaults = SYNTH_BUDGET if spec.startswith("synth") and not given else RECIPE_DEFAULTS
    if not given and defaults is RECIPE_DEFAULTS:
        raise MbsbenchError("give a training budget for this dataset: --epochs N, --steps N or --minutes M")
    shape = {k: getattr(request, k) if getattr(request, k) is not None else defaults.get(k, RECIPE_DEFAULTS[k])
             for k in ("batch", "crop_seconds")}
    extra = {k: v for k, v in defaults.items() if k not in shape}
    return TrainSettings(**shape, lr=request.lr, seed=seed, phase_loss=request.phase_loss, **(extra | given))


def resolve_configs(request: RunRequest) -> dict[str, ModelConfig]:
    """Each variant's config with the overrides and the training scan."""
    overrides = dict(request.overrides)
    if request.scan != "keep":  # same math as each variant's own scan, only faster: the budget buys more steps
        overrides.setdefault("scan", request.scan)
    return {name: build_config(name, **overrides) for name in request.variants}


def open_splits(spec: str) -> Dataset:
    """The dataset, with an error when a split training needs is empty."""
    dataset = open_dataset(spec)
    for split in ("train", "val", "test"):
        if not dataset.split(split):
            raise MbsbenchError(f"dataset {dataset.spec!r}: the {split} split is empty")
    return dataset


def run_experiment(request: RunRequest, context: RunContext) -> ExperimentOutcome:
    """Train and evaluate each (variant, seed), log each run, and return the outcomes."""
    configs = resolve_configs(request)
    dataset = open_splits(request.data)
    if context.tracking_uri:
        from bench.tracking.store import check_reachable

        check_reachable(context.tracking_uri)
    if request.resume:  # fail before any work when there is nothing to resume
        for name in configs:
            for seed in request.seeds:
                if not (run_folder(request, name, seed) / "last.pt").is_file():
                    raise MbsbenchError(f"--resume: nothing to resume in {run_folder(request, name, seed)}")
    noisy, _ = evaluate(dataset, "test", None, workers=context.workers)
    outcomes = []
    with _parent(request, context, dataset) as parent_id:
        for name, cfg in configs.items():
            for seed in request.seeds:
                outcomes.append(_one(request, context, name, cfg, seed, dataset, noisy, parent_id))
    return ExperimentOutcome(noisy, outcomes)


def run_folder(request: RunRequest, variant: str, seed: int) -> Path:
    return Path(request.out) / f"{variant}-seed{seed}"


def _parent(request: RunRequest, context: RunContext, dataset: Dataset):
    from contextlib import nullcontext

    if not (context.tracking_uri and request.parent_name):
        return nullcontext(None)
    from bench.tracking.records import parent_run
    from bench.tracking.store import provenance_tags

    tags = provenance_tags(device_name(context.device)) | {"task": "ablate", "data_fingerprint": dataset.fingerprint}
    return parent_run(context.tracking_uri, request.parent_name, tags)


def _one(request: RunRequest, context: RunContext, name: str, cfg: ModelConfig, seed: int, dataset: Dataset,
         noisy: Evaluation, parent_id: str | None) -> RunOutcome:
    settings = train_settings(request, dataset.spec, seed)
    folder = run_folder(request, name, seed)
    result, evaluation, audio = train_and_evaluate(name, cfg, dataset, settings, folder, context, request.resume)
    outcome = RunOutcome(name, seed, result, evaluation, run_figures(cfg, result, evaluation, noisy))
    paths = write_evaluation(evaluation, folder / "test") if evaluation else {}
    if context.tracking_uri:
        outcome.run_id = record_run(context.tracking_uri, outcome, cfg, settings, dataset, context.device, paths,
                                    audio, parent_id)
    return outcome


def train_and_evaluate(
    variant: str, cfg: ModelConfig, dataset: Dataset, settings: TrainSettings, folder: Path, context: RunContext,
    resume: bool = False,
) -> tuple[TrainResult, Evaluation | None, list]:
    """Train one seed, then score the best checkpoint on the full test utterances (with and without PCS)."""
    torch.manual_seed(settings.seed)
    model = build_model(cfg)
    trainer = Trainer(model, cfg, variant, dataset.split("train"), dataset.split("val"), settings, folder,
                      context.device)
    total = None if trainer.total_steps == float("inf") else int(trainer.total_steps)
    with progress(total, f"train {variant} seed {settings.seed}", "step") as bar:
        def tick(step: int, loss: float) -> None:
            bar.n = step
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update(0)

        result = trainer.run(resume, tick)
    if not result.best_path.is_file():
        return result, None, []
    load_checkpoint(result.best_path, cfg, variant, model)
    evaluation, audio = evaluate(dataset, "test", model.to(context.device), context.device, with_pcs=True,
                                 workers=context.workers, keep_audio=3)
    return result, evaluation, audio


def run_figures(cfg: ModelConfig, result: TrainResult, evaluation: Evaluation | None, noisy: Evaluation) -> dict:
    """The flat figures of one run: params, MACs, training outcome, test and noisy scores."""
    from bench.profiling.macs import count_macs
    from bench.tracking.records import summary_means

    params = count_params(cfg)
    figures = {"params": params, "params_m": params / 1e6}
    figures |= count_macs(build_model(cfg).eval(), cfg, 1.0, "cpu")
    figures |= {"train_steps": result.steps, "train_epochs": result.epochs, "train_minutes": result.seconds / 60,
                "best_step": result.best_step, "best_val_loss": result.best_val_loss}
    return figures | summary_means(evaluation) | summary_means(noisy, "noisy_")


def record_run(uri: str, outcome: RunOutcome, cfg: ModelConfig, settings: TrainSettings, dataset: Dataset,
               device: str, paths: dict, audio: list, parent: str | None = None) -> str:
    """One MLflow run per (variant, seed): config, conditions, curves, figures, CSVs, checkpoint, wavs."""
    from bench.tracking import records

    info = {"variant": outcome.variant, "seed": outcome.seed, "data": dataset.spec,
            "data_fingerprint": dataset.fingerprint, "device": device_name(device), "status": outcome.train.status,
            "reason": outcome.train.reason}
    params = cfg.to_dict() | {f"train_{k}": v for k, v in asdict(settings).items()} | {"data": dataset.spec}
    params["scan_resolved"] = resolve_scan(cfg, torch.device(device))
    return records.record_run(uri, info, params, outcome.figures, outcome.train, paths, audio, parent)
