"""Enhance a split (or take the noisy input as it is), score every utterance, summarise, record."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from bench.data.datasets import Dataset, Pair, check_pair, input_gain, is_skipped, load_pair
from bench.devices import autocast
from bench.quality.metrics import METRICS, score_many, scorers, summarize
from bench.text import format_table, scorer_line
from bench.tracking.schema import DNSMOS_METRICS
from variants.pcs import perceptual_contrast_stretch


@dataclass
class Evaluation:
    """Per-utterance scores, the summary, per-SNR means, and what was skipped."""

    per_utterance: pd.DataFrame
    summary: pd.DataFrame
    per_snr: pd.DataFrame
    skipped: list[str]
    metric_seconds: float = 0.0  # wall time of the metric stage (without PCS)
    scorers: dict[str, str] = field(default_factory=dict)  # package versions and model hashes of the scorers


def enhance(model: nn.Module | None, noisy: np.ndarray, device: str, precision: str = "fp32") -> np.ndarray:
    """The network's output for one full utterance (batch 1) without PCS, or the noisy input when model is None.

    PCS is left to the evaluation, which applies it once for the PCS columns, whatever the config's pcs flag.
    """
    if model is None:
        return noisy

    gain = input_gain(noisy, model.cfg)  # the model sees inputs normalised as in training; the output scaled back
    dtype = next(model.parameters()).dtype
    with torch.no_grad(), autocast(device, precision):
        out = model(torch.from_numpy(noisy * gain).to(device, dtype)[None], pcs=False)
    return out[0].float().cpu().numpy() / gain


def pcs(wav: np.ndarray) -> np.ndarray:
    """Perceptual contrast stretching of one waveform."""
    return perceptual_contrast_stretch(torch.from_numpy(wav.astype(np.float32))[None])[0].numpy()


def usable_pairs(pairs: list[Pair]) -> tuple[list[Pair], list[str]]:
    """Pairs that can be scored, and one line per skipped pair."""
    keep, skipped = [], []
    for pair in pairs:
        problems = check_pair(pair)
        if is_skipped(problems):
            skipped.append(f"{pair.id}: " + "; ".join(p.reason for p in problems))
        else:
            keep.append(pair)
    return keep, skipped


def evaluate(
    dataset: Dataset, split: str = "test", model: nn.Module | None = None, device: str = "cpu",
    with_pcs: bool = False, compat: bool = False, workers: int = 0,
    progress: Callable[[int], None] | None = None, keep_audio: int = 0, precision: str = "fp32",
    dnsmos: bool = False,
) -> tuple[Evaluation, list[tuple[str, np.ndarray]]]:
    """Score a split: the model's output (or the noisy input, model None), with PCS too and DNSMOS when asked."""
    pairs, skipped = usable_pairs(dataset.split(split))
    if model is not None:
        model.eval()
    items, pcs_items, audio = [], [], []
    for pair in pairs:
        clean, noisy = load_pair(pair)
        out = enhance(model, noisy, device, precision)
        items.append((pair.id, clean, out))
        if with_pcs:
            pcs_items.append((pair.id, clean, pcs(out)))
        if len(audio) < keep_audio:
            audio.append((pair.id, out))
    started = time.perf_counter()
    table = pd.DataFrame(score_many(items, workers, compat, progress, dnsmos))
    metric_seconds = time.perf_counter() - started
    meta = pd.DataFrame([{"id": p.id, "speaker": p.speaker, "snr_db": p.snr_db, "noise": p.noise} for p in pairs])
    table = meta.merge(table, on="id") if len(table) else meta
    scored = [*METRICS, *(DNSMOS_METRICS if dnsmos else ())]
    if with_pcs:
        extra = pd.DataFrame(score_many(pcs_items, workers, compat, progress, dnsmos)).set_index("id")
        table = table.join(extra[[*scored, "failed"]].add_suffix("_pcs"), on="id")
    names = scored + ([f"{m}_pcs" for m in scored] if with_pcs else [])
    per_snr = table.groupby("snr_db")[names].mean().reset_index() if table["snr_db"].notna().any() else pd.DataFrame()
    made_by = scorers(dnsmos, intrusive=any(clean is not None for _, clean, _ in items))
    return Evaluation(table, summarize(table, names), per_snr, skipped, metric_seconds, made_by), audio


def write_evaluation(result: Evaluation, folder: Path) -> dict[str, Path]:
    """per_utterance.csv, summary.csv, per_snr.csv and skipped.txt in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.csv" for name in ("per_utterance", "summary", "per_snr")}
    result.per_utterance.to_csv(paths["per_utterance"], index=False)
    result.summary.to_csv(paths["summary"], index=False)
    result.per_snr.to_csv(paths["per_snr"], index=False)
    paths["skipped"] = folder / "skipped.txt"
    paths["skipped"].write_text("".join(line + "\n" for line in result.skipped))
    return paths


def format_evaluation(result: Evaluation, label: str, spec: str, split: str, folder: Path) -> str:
    """Summary and per-SNR tables as text."""
    rows = result.summary.to_dict("records")
    text = f"{label} on {spec} [{split}]: {len(result.per_utterance)} utterances scored, "
    text += f"{len(result.skipped)} skipped; metric stage {result.metric_seconds:.1f} s; "
    text += f"per-utterance CSV in {folder}\n"
    columns = ["metric", "mean", "std", "ci95", "n_scored", "n_failed", "n_total"]
    text += format_table(rows, columns, columns[1:])
    text += "\n(n_scored: utterances in the mean; n_failed: of those, outputs scored at the worst value)"
    text += "\n" + scorer_line(result.scorers)
    if len(result.per_snr):
        cols = [c for c in result.per_snr.columns if not c.endswith("_pcs")]
        text += "\n\nmean per SNR (dB)\n" + format_table(result.per_snr[cols].to_dict("records"), cols, cols)
    return text

