"""CLI handlers for measuring: `bench profile` and `bench scan`."""

import argparse
import json
import sys

from bench.devices import device_name, resolve_device
from bench.params import format_param_rows, model_param_rows
from bench.profile import (
    COMPARE_VARIANTS,
    ProfileSettings,
    compare_scans,
    measured_model,
    profile_variant,
    record_profile,
    top_ops_table,
)
from bench.scanbench import available_scans, bench_model_step, bench_scans, model_shapes, record_scan_bench
from bench.text import format_table
from bench.tracking import check_reachable, resolve_uri
from variants.errors import MbsbenchError
from variants.registry import all_names, build_config, lookup, parse_overrides
from variants.scan import INDEXED_LOOPS


def _names(text: str | None, known: list[str]) -> list[str]:
    if not text:
        return known
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        lookup({k: k for k in known}, name, "scan")
    return names


def cmd_scan(args: argparse.Namespace) -> str:
    device = resolve_device(args.device)
    if not args.no_track:
        check_reachable(resolve_uri(args.tracking_uri))
    known = available_scans(device)
    if args.model:
        step_names = _names(args.scans, [n for n in known if n not in INDEXED_LOOPS])
        rows = bench_model_step(args.model, step_names, args.batch, args.seconds, args.repeats, device)
        columns = ["model", "scan", "batch", "seconds", "step_s", "peak_live_mib"]
    else:
        shapes = model_shapes(args.batch, args.frames)
        rows = bench_scans(shapes, _names(args.scans, known), args.chunk, args.repeats, device, check=not args.no_check)
        columns = ["shape", "scan", "b", "l", "d", "n", "fwd_s", "fwd_bwd_s", "saved_mib", "peak_live_mib"]
        columns += [] if args.no_check else ["max_rel_err"]
    if not args.no_track:
        settings = {k: getattr(args, k) for k in ("batch", "frames", "chunk", "repeats", "model", "seconds")}
        record_scan_bench(rows, resolve_uri(args.tracking_uri), device_name(device), settings)
    if args.format == "json":
        return json.dumps({"device": device_name(device), "chunk_size": args.chunk, "rows": rows}, indent=2)
    head = f"device: {device_name(device)}, float32, chunk {args.chunk}, median of {args.repeats} after warm-up\n"
    return head + format_table(rows, columns, right=[c for c in columns if c not in ("shape", "scan", "model")])


PROFILE_COLUMNS = [
    "variant", "params", "macs_g_per_s", "scan_macs_g_per_s", "peak_mem_train_mib", "peak_mem_infer_mib",
    "peak_rss_train_mib", "max_batch_train", "infer_step_s", "train_step_s", "rtf_infer", "status",
]


def _floats(text: str | None) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip()) if text else ()
    except ValueError:
        raise MbsbenchError(f"--lengths {text!r}: expected comma-separated seconds, e.g. 1,2,4,8") from None


def cmd_profile(args: argparse.Namespace) -> str:
    device = resolve_device(args.device)
    settings = ProfileSettings(
        batch=args.batch, seconds=args.seconds, device=device, dtype=args.dtype, budget_gb=args.budget_gb,
        lengths=_floats(args.lengths), repeats=args.repeats, rss=not args.no_rss,
    )
    overrides = parse_overrides(args.set)
    if args.top_ops is not None:
        return _top_ops(args, settings, overrides)
    if args.compare is not None:
        return _compare(args, settings, overrides)
    names = all_names() if args.all else [args.variant]
    configs = {name: build_config(name, **overrides) for name in names}
    uri = None if args.no_track else resolve_uri(args.tracking_uri)
    if uri:
        check_reachable(uri)
    rows = []
    for index, (name, cfg) in enumerate(configs.items(), 1):
        print(f"[{index}/{len(configs)}] profiling {name} ...", file=sys.stderr, flush=True)
        rows.append(profile_or_record_failure(name, cfg, settings))
        if uri:
            table = cmd_params_text(name, cfg)
            rows[-1]["run_id"] = record_profile(rows[-1], cfg, uri, table)
    if args.format == "json":
        return json.dumps(rows, indent=2, default=str)
    s = settings
    head = f"device: {rows[0]['device']}, {s.dtype}, batch {s.batch}, {s.seconds} s per utterance, "
    head += f"median of {s.repeats}; memory in MiB (live tensor peak), max batch in {s.budget_gb} GiB\n"
    return head + format_table(rows, PROFILE_COLUMNS, right=PROFILE_COLUMNS[1:-1])


def _compare(args: argparse.Namespace, settings: ProfileSettings, overrides: dict) -> str:
    names = [args.compare] if args.compare else list(COMPARE_VARIANTS)
    scans = _names(args.scans, [n for n in available_scans(settings.device) if n not in INDEXED_LOOPS])
    chunks = [int(c) for c in _floats(args.chunks)] or [32]
    rows = compare_scans(names, scans, chunks, settings, overrides)
    if args.format == "json":
        return json.dumps(rows, indent=2)
    columns = ["variant", "scan", "chunk", "infer_step_s", "train_step_s", "rtf_infer", "rtf_train"]
    head = f"device: {device_name(settings.device)}, batch {settings.batch}, {settings.seconds} s, median of "
    head += f"{settings.repeats} after {settings.warmup} warm-up\n"
    return head + format_table(rows, columns, columns[2:])


def _top_ops(args: argparse.Namespace, settings: ProfileSettings, overrides: dict) -> str:
    if not args.variant:
        raise MbsbenchError("--top-ops needs --variant NAME: one model's steps are profiled")
    if args.top_ops < 1:
        raise MbsbenchError(f"--top-ops {args.top_ops}: expected a positive number of rows")
    cfg = build_config(args.variant, **overrides)
    model = measured_model(cfg, settings.device)
    s = settings
    parts = []
    for mode in ("train", "infer"):
        title = f"{args.variant}, {mode} step, batch {s.batch}, {s.seconds} s, {device_name(s.device)}, scan={cfg.scan}"
        parts.append(f"{title}\n{top_ops_table(model, cfg, s, mode, args.top_ops)}")
    return "\n".join(parts)


def profile_or_record_failure(name: str, cfg, settings: ProfileSettings) -> dict:
    """profile_variant, with an unexpected failure recorded as the row's result so a sweep goes on."""
    try:
        return profile_variant(name, cfg, settings)
    except MbsbenchError:
        raise
    except Exception as err:  # a failure is a result: recorded with its reason
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        print(f"  {name} failed: {reason}", file=sys.stderr)
        return {"variant": name, "device": device_name(settings.device), "status": "error", "reason": reason,
                "memory_curve": []}


def cmd_params_text(name: str, cfg) -> str:
    rows = model_param_rows(cfg)
    return format_param_rows(f"{name}: {rows[0].params:,} parameters", rows)


def add_measure_commands(sub, add_format) -> None:
    """Register profile and scan on the bench parser."""
    p = sub.add_parser("profile", help="params, MACs, peak memory, max batch, throughput; logged to MLflow")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--variant", help="registered name, e.g. original+expand1")
    which.add_argument("--all", action="store_true", help="every registered variant and single change")
    which.add_argument("--compare", nargs="?", const="", metavar="VARIANT",
                       help="step times with each scan: original, optimized, optimized_a, bsrnn, or VARIANT")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--seconds", type=float, default=2.0, help="audio per utterance")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16 (autocast)")
    p.add_argument("--budget-gb", type=float, default=12.0, help="memory budget in GiB for the max batch")
    p.add_argument("--lengths", help="extra seconds for the memory-vs-length curve, e.g. 1,2,4,8")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-rss", action="store_true", help="skip the fresh-process peak RSS measurement")
    p.add_argument("--scans", help="--compare: comma-separated scans (default: every available one)")
    p.add_argument("--chunks", help="--compare: chunk sizes, e.g. 16,32,64,128 (default 32)")
    p.add_argument("--top-ops", type=int, metavar="N",
                   help="with --variant: torch.profiler's N costliest ops of one training and one inference step"
                        " (printed, not logged)")
    p.add_argument("--tracking-uri", help="MLflow URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    add_format(p)
    p.set_defaults(func=cmd_profile)
    p = sub.add_parser("scan", help="every selective-scan implementation: time, memory, error")
    p.add_argument("--batch", type=int, default=1, help="utterances per batch (sequences = batch x 31 bands)")
    p.add_argument("--frames", type=int, default=251, help="time steps of the time scans (251 = 2 s)")
    p.add_argument("--chunk", type=int, default=32, help="chunk size of the chunked scans")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scans", help="comma-separated subset, e.g. naive,chunked_ckpt")
    p.add_argument("--model", help="time a whole training step of this variant with each scan instead")
    p.add_argument("--seconds", type=float, default=1.0, help="audio per utterance for --model")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--no-check", action="store_true", help="skip the float64 reference comparison")
    p.add_argument("--tracking-uri", help="MLflow URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    add_format(p)
    p.set_defaults(func=cmd_scan)
