"""CLI handlers for `bench run` and `bench ablate`."""

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

from bench.cli_measure import PROFILE_COLUMNS, profile_or_record_failure
from bench.data import open_dataset
from bench.devices import device_name, resolve_device
from bench.evaluate import write_evaluation
from bench.metrics import summary_means
from bench.profile import ProfileSettings
from bench.run import (
    SYNTH_BUDGET,
    RunOutcome,
    ablation_names,
    noisy_reference,
    record_run,
    run_figures,
    train_and_evaluate,
)
from bench.text import format_table
from bench.train import TrainSettings
from variants.config import CHOICES
from variants.errors import MbsbenchError
from variants.registry import build_config, parse_overrides

SUMMARY = ["variant", "seed", "status", "train_steps", "train_minutes", "pesq_wb", "stoi", "csig", "cbak", "covl",
           "ssnr", "si_sdr", "pesq_wb_pcs"]


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise MbsbenchError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None


def train_settings(args: argparse.Namespace, spec: str, seed: int) -> TrainSettings:
    """Budget from the flags; on the synth corpus with no budget given, the SYNTH_BUDGET default."""
    given = {k: getattr(args, k) for k in ("epochs", "steps", "minutes") if getattr(args, k) is not None}
    defaults = SYNTH_BUDGET if spec.startswith("synth") and not given else {}
    if not given and not defaults:
        raise MbsbenchError("give a training budget for this dataset: --epochs N, --steps N or --minutes M")
    batch = args.batch or defaults.get("batch", 6)
    crop = args.crop_seconds or defaults.get("crop_seconds", 2.0)
    extra = {k: v for k, v in defaults.items() if k not in ("batch", "crop_seconds")}
    return TrainSettings(batch=batch, crop_seconds=crop, lr=args.lr, seed=seed, phase_loss=args.phase_loss,
                         **(extra | given))


def run_variants(names: list[str], args: argparse.Namespace, parent_name: str | None = None) -> list[dict]:
    """Train and evaluate each (variant, seed), log each run, and return summary rows."""
    device = resolve_device(args.device)
    overrides = parse_overrides(args.set)
    if args.scan != "keep":  # same math as each variant's own scan, only faster: the budget buys more steps
        overrides.setdefault("scan", args.scan)
    configs = {name: build_config(name, **overrides) for name in names}
    seeds = _seeds(args.seeds)
    dataset = open_dataset(args.data)
    for split in ("train", "val", "test"):
        if not dataset.split(split):
            raise MbsbenchError(f"dataset {dataset.spec!r}: the {split} split is empty")
    uri = None
    if not args.no_track:
        from bench.tracking import check_reachable, resolve_uri

        uri = resolve_uri(args.tracking_uri)
        check_reachable(uri)
    if args.resume:  # fail before any work when there is nothing to resume
        for name in configs:
            for seed in seeds:
                if not (Path(args.out) / f"{name}-seed{seed}" / "last.pt").is_file():
                    raise MbsbenchError(f"--resume: nothing to resume in {Path(args.out) / f'{name}-seed{seed}'}")
    noisy = noisy_reference(dataset, args.workers, {})
    rows = [{"variant": "noisy input", "seed": "-", "status": "ok"} | summary_means(noisy)]
    parent = _parent(uri, parent_name, dataset, device)
    with parent as parent_id:
        for name, cfg in configs.items():
            for seed in seeds:
                rows.append(_one(name, cfg, seed, args, dataset, device, noisy, uri, parent_id))
    return rows


def _parent(uri: str | None, name: str | None, dataset, device: str):
    if not (uri and name):
        return nullcontext(None)
    from bench.tracking import parent_run, provenance_tags

    return parent_run(uri, "mbsbench-run", name, provenance_tags(device_name(device)) | {"task": "ablate",
                      "data_fingerprint": dataset.fingerprint})


def _one(name, cfg, seed, args, dataset, device, noisy, uri, parent_id) -> dict:
    settings = train_settings(args, dataset.spec, seed)
    folder = Path(args.out) / f"{name}-seed{seed}"
    result, evaluation, audio = train_and_evaluate(name, cfg, dataset, settings, folder, device, args.workers,
                                                   args.resume)
    outcome = RunOutcome(name, seed, result, evaluation, run_figures(cfg, result, evaluation, noisy))
    paths = write_evaluation(evaluation, folder / "test") if evaluation else {}
    if uri:
        outcome.run_id = record_run(uri, outcome, cfg, settings, dataset, device, folder, paths, audio, parent_id)
    status = result.status if evaluation else f"{result.status} (no checkpoint)"
    return {"variant": name, "seed": seed, "status": status, "reason": result.reason} | outcome.figures


def cmd_run(args: argparse.Namespace) -> str:
    rows = run_variants([args.variant], args)
    return _render(rows, args.format)


def cmd_ablate(args: argparse.Namespace) -> str:
    names = ablation_names(args.base, [c.strip() for c in args.changes.split(",")] if args.changes else None)
    if args.profile_only:
        return _ablate_profile(names, args)
    return _render(run_variants(names, args, f"ablate {args.base}"), args.format)


def _ablate_profile(names: list[str], args: argparse.Namespace) -> str:
    device = resolve_device(args.device)
    settings = ProfileSettings(batch=args.batch or 1, seconds=args.crop_seconds or 1.0, device=device,
                               repeats=2, rss=False)
    overrides = parse_overrides(args.set)
    rows = []
    for index, name in enumerate(names, 1):
        print(f"[{index}/{len(names)}] profiling {name} ...", file=sys.stderr, flush=True)
        rows.append(profile_or_record_failure(name, build_config(name, **overrides), settings))
    if args.format == "json":
        return json.dumps(rows, indent=2, default=str)
    return format_table(rows, PROFILE_COLUMNS, right=PROFILE_COLUMNS[1:-1])


def _render(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str)
    return "test split, full utterances; mean over utterances\n" + format_table(rows, SUMMARY, SUMMARY[3:])


def add_run_commands(sub, add_format) -> None:
    """Register run and ablate on the bench parser."""
    for command in ("run", "ablate"):
        p = sub.add_parser(command, help="train, evaluate and record " + ("a variant" if command == "run" else
                                                                           "every single change of a base"))
        if command == "run":
            p.add_argument("--variant", required=True)
            p.set_defaults(func=cmd_run)
        else:
            p.add_argument("--base", required=True, choices=("original", "optimized"))
            p.add_argument("--changes", help="comma-separated subset of the eight changes")
            p.add_argument("--profile-only", action="store_true", help="profile each variant, no training")
            p.set_defaults(func=cmd_ablate)
        p.add_argument("--data", default="synth", help="synth, vbd:PATH or paired:CLEAN_DIR,NOISY_DIR")
        p.add_argument("--epochs", type=int)
        p.add_argument("--steps", type=int)
        p.add_argument("--minutes", type=float)
        p.add_argument("--seeds", default="0")
        p.add_argument("--batch", type=int, help="default 6 (synth default budget: 4)")
        p.add_argument("--crop-seconds", type=float, help="default 2 (synth default budget: 1)")
        p.add_argument("--lr", type=float, default=1e-3)
        p.add_argument("--phase-loss", action="store_true", help="phase term for the dual decoder")
        p.add_argument("--device", default="auto")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("--scan", default="auto", choices=(*CHOICES["scan"], "keep"),
                       help="scan for training (default auto: the fastest exact one here); keep: each variant's own;"
                            " --set scan=... wins")
        p.add_argument("--workers", type=int, default=0, help="metric processes (0: all cores)")
        p.add_argument("--out", default="runs", help="folder for checkpoints and CSVs")
        p.add_argument("--resume", action="store_true", help="continue from OUT/VARIANT-seedS/last.pt")
        p.add_argument("--tracking-uri")
        p.add_argument("--no-track", action="store_true")
        add_format(p)
