"""`bench run` and `bench ablate`: profile, train, evaluate and record variants end to end."""

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.checkpoint import load_checkpoint
from bench.data import Dataset
from bench.devices import device_name
from bench.evaluate import Evaluation, evaluate
from bench.metrics import summary_means
from bench.profile import count_macs
from bench.train import Trainer, TrainResult, TrainSettings
from variants.config import ModelConfig
from variants.layers import resolve_scan
from variants.registry import CHANGES, build_model

# on the embedded corpus, bench run trains this long unless told otherwise (fits 10 min here)
SYNTH_BUDGET = {"minutes": 5.0, "batch": 4, "crop_seconds": 1.0, "val_every": 100, "checkpoint_every": 100}


@dataclass
class RunOutcome:
    """One (variant, seed): its training result, test evaluation and run id."""

    variant: str
    seed: int
    train: TrainResult
    evaluation: Evaluation | None
    figures: dict
    run_id: str = ""


def noisy_reference(dataset: Dataset, workers: int, cache: dict) -> Evaluation:
    """The noisy input's scores on the test split, computed once per dataset."""
    if dataset.spec not in cache:
        cache[dataset.spec], _ = evaluate(dataset, "test", None, workers=workers)
    return cache[dataset.spec]


def train_and_evaluate(
    variant: str, cfg: ModelConfig, dataset: Dataset, settings: TrainSettings, folder: Path, device: str,
    workers: int = 0, resume: bool = False,
) -> tuple[TrainResult, Evaluation | None, list]:
    """Train one seed, then score the best checkpoint on the full test utterances (with and without PCS)."""
    torch.manual_seed(settings.seed)
    model = build_model(cfg)
    trainer = Trainer(model, cfg, variant, dataset.split("train"), dataset.split("val"), settings, folder, device)
    from tqdm import tqdm

    total = None if trainer.total_steps == float("inf") else int(trainer.total_steps)
    with tqdm(total=total, desc=f"train {variant} seed {settings.seed}", unit="step", file=sys.stderr,
              disable=None) as bar:
        def tick(step: int, loss: float) -> None:
            bar.n = step
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update(0)

        result = trainer.run(resume, tick)
    if not result.best_path.is_file():
        return result, None, []
    load_checkpoint(result.best_path, cfg, variant, model)
    evaluation, audio = evaluate(dataset, "test", model.to(device), device, with_pcs=True, workers=workers,
                                 keep_audio=3)
    return result, evaluation, audio


def run_figures(cfg: ModelConfig, result: TrainResult, evaluation: Evaluation | None, noisy: Evaluation) -> dict:
    """The flat figures of one run: params, MACs, training outcome, test and noisy scores."""
    model = build_model(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    figures = {"params": params, "params_m": params / 1e6}
    figures |= count_macs(model, cfg, 1.0, "cpu")
    figures |= {"train_steps": result.steps, "train_epochs": result.epochs, "train_minutes": result.seconds / 60,
                "best_step": result.best_step, "best_val_loss": result.best_val_loss}
    return figures | summary_means(evaluation) | summary_means(noisy, "noisy_")


def ablation_names(base: str, changes: list[str] | None = None) -> list[str]:
    """The base and each single change on top of it (original + X) or taken from it (optimized - X)."""
    sign = "+" if base.startswith("original") else "-"
    return [base] + [f"{base}{sign}{change}" for change in (changes or list(CHANGES))]


def record_run(uri: str, outcome: RunOutcome, cfg: ModelConfig, settings: TrainSettings, dataset: Dataset,
               device: str, folder: Path, paths: dict, audio: list, parent: str | None = None) -> str:
    """One MLflow run per (variant, seed): config, conditions, curves, figures, CSVs, checkpoint, wavs."""
    from bench.tracking import log_run_outcome

    info = {"variant": outcome.variant, "seed": outcome.seed, "data": dataset.spec,
            "data_fingerprint": dataset.fingerprint, "device": device_name(device), "status": outcome.train.status,
            "reason": outcome.train.reason}
    params = cfg.to_dict() | {f"train_{k}": v for k, v in asdict(settings).items()} | {"data": dataset.spec}
    params["scan_resolved"] = resolve_scan(cfg, torch.device(device))
    return log_run_outcome(uri, info, params, outcome.figures, outcome.train, paths, audio, parent)
