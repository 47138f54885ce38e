"""`bench data check`, `bench evaluate`, `bench metrics`: thin handlers over bench.data and bench.quality."""

import argparse
import json

from bench.cli.common import (
    DATA_HELP,
    add_command,
    add_device,
    add_dnsmos,
    add_format,
    add_set,
    add_tracking,
    add_workers,
    tracking_uri,
)


def cmd_data_check(args: argparse.Namespace) -> str:
    from bench.data.datasets import check_dataset, open_dataset

    dataset = open_dataset(args.spec)
    problems = check_dataset(dataset, [args.split] if args.split else None)
    if args.format == "json":
        return json.dumps([p.__dict__ for p in problems], indent=2)
    sizes = ", ".join(f"{name} {len(pairs)}" for name, pairs in dataset.splits.items())
    head = f"{dataset.spec}: {sizes} pairs; fingerprint {dataset.fingerprint}; {len(problems)} problems\n"
    return head + "".join(p.line() + "\n" for p in problems)


def _model(args: argparse.Namespace, device: str):
    from pathlib import Path

    from bench.training.checkpoint import load_checkpoint
    from variants.errors import MbsbenchError
    from variants.registry import build_config, build_model, parse_overrides

    if args.noisy:
        return None, "noisy"
    if not args.variant or not args.checkpoint:
        raise MbsbenchError("evaluate needs --noisy, or --variant NAME with --checkpoint PATH")
    cfg = build_config(args.variant, **parse_overrides(args.set))
    model = build_model(cfg)
    load_checkpoint(Path(args.checkpoint), cfg, args.variant, model)
    return model.to(device), args.variant


def cmd_evaluate(args: argparse.Namespace) -> str:
    import time
    from pathlib import Path

    from bench.console import progress
    from bench.data.datasets import open_dataset, spec_form
    from bench.devices import device_name, resolve_device
    from bench.quality.evaluate import evaluate, format_evaluation, write_evaluation

    device = resolve_device(args.device)
    uri = tracking_uri(args)  # checked before scoring, not after
    # from the spec's kind (folder: no clean side), before the data is opened or a model loaded
    dnsmos = with_dnsmos(args.dnsmos, spec_form(args.data)[0] != "folder", args.data)
    model, label = _model(args, device)
    dataset = open_dataset(args.data)
    pairs = dataset.split(args.split)
    with progress(len(pairs) * (2 if args.pcs else 1), f"scoring {label}", "utt") as bar:
        result, audio = evaluate(dataset, args.split, model, device, args.pcs, args.composite_compat, args.workers,
                                 bar.update, keep_audio=3, dnsmos=dnsmos)
    folder = Path(args.out or f"runs/evaluate-{label}-{time.strftime('%Y%m%d-%H%M%S')}")
    paths = write_evaluation(result, folder)
    if uri:
        from bench.tracking.records import logged_or_kept, record_evaluation

        info = {"label": label, "data": dataset.spec, "data_fingerprint": dataset.fingerprint, "split": args.split,
                "pcs": args.pcs, "composite_mode": "compat" if args.composite_compat else "matlab",
                "device": device_name(device)} | result.scorers
        logged_or_kept(lambda: record_evaluation(uri, result, paths, audio, info), str(folder))
    if args.format == "json":
        return result.summary.to_json(orient="records", indent=2)
    return format_evaluation(result, label, dataset.spec, args.split, folder)


def with_dnsmos(asked: bool | None, has_clean: bool, what: str) -> bool:
    """Whether DNSMOS runs: as asked (--dnsmos refused with one line without the extra), else where installed;
    without a clean side it is the only metric there is, so it must be installed."""
    from bench.quality.dnsmos import MISSING, dnsmos_available
    from variants.errors import MbsbenchError

    if has_clean:
        if asked and not dnsmos_available():
            raise MbsbenchError(MISSING)
        return asked is not False and dnsmos_available()
    if asked is False:
        raise MbsbenchError(f"{what}: no clean reference, and --no-dnsmos leaves no metric to compute")
    if not dnsmos_available():
        raise MbsbenchError(f"{what}: no clean reference, so only non-intrusive metrics apply; {MISSING}")
    return True


def cmd_metrics(args: argparse.Namespace) -> str:
    from pathlib import Path

    from bench.data.datasets import read_audio
    from bench.quality.metrics import score_pair, scorers
    from bench.text import format_table, scorer_line

    dnsmos = with_dnsmos(args.dnsmos, args.clean is not None, args.enhanced)
    clean = read_audio(Path(args.clean))[0] if args.clean else None
    enhanced, _ = read_audio(Path(args.enhanced))
    if clean is not None and len(clean) != len(enhanced):
        from bench.console import warn

        warn(f"{args.clean} has {len(clean)} samples and {args.enhanced} {len(enhanced)} (at 16 kHz): both cut to "
             f"the first {min(len(clean), len(enhanced))}")
    scores, made_by = score_pair(clean, enhanced, args.composite_compat, dnsmos), scorers(dnsmos, clean is not None)
    if args.format == "json":
        return json.dumps(scores | made_by, indent=2)
    rows = [{"metric": k, "value": v} for k, v in scores.items()]
    return format_table(rows, ["metric", "value"], ["value"]) + "\n" + scorer_line(made_by)


def add_quality_commands(sub) -> None:
    """Register data, evaluate and metrics."""
    p = sub.add_parser("data", help="datasets: check a dataset for bad files", description="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    p = add_command(data_sub, "check", "list every bad file with its reason and what is done about it",
                    "  python -m bench data check vbd:~/vbd\n  python -m bench data check synth --split test",
                    cmd_data_check)
    p.add_argument("spec", help=DATA_HELP)
    p.add_argument("--split", help="only this split (train, val or test)")
    add_format(p)

    p = add_command(sub, "evaluate", "score a split: a trained variant, or the noisy input (--noisy)",
                    "  python -m bench evaluate --data synth --noisy\n"
                    "  python -m bench evaluate --data vbd:~/vbd --variant optimized --checkpoint runs/x/best.pt --pcs",
                    cmd_evaluate)
    p.add_argument("--data", default="synth", help=f"dataset: {DATA_HELP} (default synth)")
    p.add_argument("--split", default="test", help="split to score (default test)")
    p.add_argument("--noisy", action="store_true", help="score the unprocessed noisy input")
    p.add_argument("--variant", help="registered name of the checkpoint's model")
    p.add_argument("--checkpoint", help="a checkpoint written by bench run (best.pt or last.pt)")
    add_set(p)
    p.add_argument("--pcs", action="store_true", help="also score with perceptual contrast stretching")
    p.add_argument("--composite-compat", action="store_true", help="composite as the commonly copied Python port")
    add_dnsmos(p)
    add_workers(p)
    add_device(p)
    p.add_argument("--out", help="folder for the CSVs (default runs/evaluate-LABEL-TIME)")
    add_tracking(p)
    add_format(p)

    p = add_command(sub, "metrics", "score one clean/enhanced pair, or one recording alone (DNSMOS)",
                    "  python -m bench metrics --clean a.wav --enhanced b.wav --format json\n"
                    "  python -m bench metrics --enhanced recording.wav", cmd_metrics)
    p.add_argument("--clean", help="the clean reference (any sample rate; resampled to 16 kHz); without it only the "
                                   "non-intrusive metrics run")
    p.add_argument("--enhanced", required=True, help="the enhanced (or noisy) signal to score")
    p.add_argument("--composite-compat", action="store_true", help="composite as the commonly copied Python port")
    add_dnsmos(p)
    add_format(p)
