"""CLI handlers for data and quality: `data check`, `evaluate`, `metrics`."""

import argparse
import json
import sys
import time
from pathlib import Path

from bench.checkpoint import load_checkpoint
from bench.data import check_dataset, open_dataset, read_audio
from bench.devices import device_name, resolve_device
from bench.evaluate import Evaluation, evaluate, write_evaluation
from bench.metrics import score_pair
from bench.text import format_table
from variants.errors import MbsbenchError
from variants.registry import build_config, build_model, parse_overrides


def cmd_data_check(args: argparse.Namespace) -> str:
    dataset = open_dataset(args.spec)
    problems = check_dataset(dataset, [args.split] if args.split else None)
    sizes = ", ".join(f"{name} {len(pairs)}" for name, pairs in dataset.splits.items())
    head = f"{dataset.spec}: {sizes} pairs; fingerprint {dataset.fingerprint}; {len(problems)} problems\n"
    if args.format == "json":
        return json.dumps([p.__dict__ for p in problems], indent=2)
    return head + "".join(p.line() + "\n" for p in problems)


def _progress(total: int, label: str):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit="utt", file=sys.stderr, disable=None)
    return bar, bar.update


def _model(args: argparse.Namespace, device: str):
    if args.noisy:
        return None, "noisy"
    if not args.variant or not args.checkpoint:
        raise MbsbenchError("evaluate needs --noisy, or --variant NAME with --checkpoint PATH")
    cfg = build_config(args.variant, **parse_overrides(args.set))
    model = build_model(cfg)
    load_checkpoint(Path(args.checkpoint), cfg, args.variant, model)
    return model.to(device), args.variant


def cmd_evaluate(args: argparse.Namespace) -> str:
    device = resolve_device(args.device)
    dataset = open_dataset(args.data)
    pairs = dataset.split(args.split)
    model, label = _model(args, device)
    bar, tick = _progress(len(pairs) * (2 if args.pcs else 1), f"scoring {label}")
    result, audio = evaluate(dataset, args.split, model, device, args.pcs, args.composite_compat, args.workers,
                             tick, keep_audio=3)
    bar.close()
    folder = Path(args.out or f"runs/evaluate-{label}-{time.strftime('%Y%m%d-%H%M%S')}")
    paths = write_evaluation(result, folder)
    if not args.no_track:
        from bench.tracking import record_evaluation, resolve_uri

        record_evaluation(resolve_uri(args.tracking_uri), result, paths, audio, {
            "label": label, "data": dataset.spec, "data_fingerprint": dataset.fingerprint, "split": args.split,
            "pcs": args.pcs, "composite_mode": "compat" if args.composite_compat else "matlab",
            "device": device_name(device),
        })
    if args.format == "json":
        return result.summary.to_json(orient="records", indent=2)
    return format_evaluation(result, label, dataset.spec, args.split, folder)


def format_evaluation(result: Evaluation, label: str, spec: str, split: str, folder: Path) -> str:
    """Summary and per-SNR tables as text."""
    rows = result.summary.to_dict("records")
    text = f"{label} on {spec} [{split}]: {len(result.per_utterance)} utterances scored, "
    text += f"{len(result.skipped)} skipped; metric stage {result.metric_seconds:.1f} s; "
    text += f"per-utterance CSV in {folder}\n"
    text += format_table(rows, ["metric", "mean", "std", "ci95", "n_scored", "n_total"], ["mean", "std", "ci95"])
    if len(result.per_snr):
        cols = [c for c in result.per_snr.columns if not c.endswith("_pcs")]
        text += "\n\nmean per SNR (dB)\n" + format_table(result.per_snr[cols].to_dict("records"), cols, cols)
    return text


def cmd_metrics(args: argparse.Namespace) -> str:
    clean, _ = read_audio(Path(args.clean))
    enhanced, _ = read_audio(Path(args.enhanced))
    scores = score_pair(clean, enhanced, args.composite_compat)
    if args.format == "json":
        return json.dumps(scores, indent=2)
    return format_table([{"metric": k, "value": v} for k, v in scores.items()], ["metric", "value"], ["value"])


def add_quality_commands(sub, add_format) -> None:
    """Register data, evaluate and metrics on the bench parser."""
    p = sub.add_parser("data", help="datasets: check a dataset for bad files")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("check", help="list every bad file with its reason and what is done about it")
    p.add_argument("spec", help="synth, synth:SEED, vbd:PATH or paired:CLEAN_DIR,NOISY_DIR")
    p.add_argument("--split", help="only this split")
    add_format(p)
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("evaluate", help="score a split: a trained variant, or the noisy input (--noisy)")
    p.add_argument("--data", default="synth", help="synth, vbd:PATH or paired:CLEAN_DIR,NOISY_DIR")
    p.add_argument("--split", default="test")
    p.add_argument("--noisy", action="store_true", help="score the unprocessed noisy input")
    p.add_argument("--variant")
    p.add_argument("--checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--pcs", action="store_true", help="also score with perceptual contrast stretching")
    p.add_argument("--composite-compat", action="store_true", help="composite as the commonly copied Python port")
    p.add_argument("--workers", type=int, default=0, help="metric processes (0: all cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="folder for the CSVs (default runs/evaluate-LABEL-TIME)")
    p.add_argument("--tracking-uri")
    p.add_argument("--no-track", action="store_true")
    add_format(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("metrics", help="score one clean/enhanced pair")
    p.add_argument("--clean", required=True)
    p.add_argument("--enhanced", required=True)
    p.add_argument("--composite-compat", action="store_true")
    add_format(p)
    p.set_defaults(func=cmd_metrics)
