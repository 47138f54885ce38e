"""`bench profile` and `bench scan`: thin handlers over bench.profiling."""

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bench.cli.common import (
    above,
    add_command,
    add_compile,
    add_device,
    add_format,
    add_set,
    add_tracking,
    comma_list,
    names,
    positive_int,
    tracking_uri,
)


@contextmanager
def rows_kept_on_interrupt(rows: list[dict], render: Callable[[list[dict]], str], what: str) -> Iterator[None]:
    """Ctrl-C inside the block: the rows measured so far are results, printed on stdout before the interrupt
    goes on (its one line says '<n> <what>')."""
    try:
        yield
    except KeyboardInterrupt as err:
        from bench.interrupts import add_kept

        if rows:
            print(render(rows))
        add_kept(err, f"{len(rows)} {what}")
        raise


def profile_settings(args: argparse.Namespace, device: str, **fixed):
    """ProfileSettings from the profile flags (fixed values win)."""
    from bench.profiling.workload import ProfileSettings

    values = {"batch": args.batch, "seconds": args.seconds, "dtype": args.dtype, "budget_gb": args.budget_gb,
              "lengths": args.lengths or (), "repeats": args.repeats, "rss": args.rss,
              "ops_only": getattr(args, "ops_only", False),
              "strict_timing": getattr(args, "strict_timing", False),
              "predict": getattr(args, "predict", False), "compile": getattr(args, "compile", None)} | fixed
    return ProfileSettings(device=device, **values)


def profile_table(rows: list[dict], settings) -> str:
    """The profile rows under a line stating their conditions."""
    from bench.text import format_table
    from bench.tracking.schema import COMPILED_COLUMNS, PROFILE_COLUMNS

    s = settings
    head = f"device: {rows[0]['device']}, {s.dtype}, batch {s.batch}, {s.seconds} s per utterance, "
    head += f"median of {s.repeats}; memory in MiB (live tensor peak), max batch in {s.budget_gb} GiB\n"
    text = head + format_table(rows, PROFILE_COLUMNS, right=PROFILE_COLUMNS[1:-1])
    if s.compile:
        text += (f"\n\neager and compiled (torch.compile, mode {s.compile}) steps in seconds; compile_s: the first "
                 "call of each, not in the step times\n" + format_table(rows, COMPILED_COLUMNS, COMPILED_COLUMNS[2:]))
    return text


def profile_named(names_: list[str], overrides: dict, settings, uri: str | None, fmt: str) -> str:
    """profile_variants over registered names, recorded to the store when there is one; the rendered rows."""
    from bench.profiling.profile import profile_variants
    from variants.errors import MbsbenchError
    from variants.registry import build_config

    configs = {name: build_config(name, **overrides) for name in names_}
    record = None
    if uri:
        from bench.tracking.records import profile_recorder

        record = profile_recorder(uri)
    rows: list[dict] = []

    def render(done: list[dict]) -> str:
        return json.dumps(done, indent=2, default=str) if fmt == "json" else profile_table(done, settings)

    kept = f"of {len(configs)} profiles measured{', logged' if uri else ''}, printed above"
    with rows_kept_on_interrupt(rows, render, kept):
        profile_variants(configs, settings, record, rows)
    refused = [row["variant"] for row in rows if row.get("status") == "refused"]
    unlogged = [row for row in rows if row.get("run_id") == ""]
    if unlogged:  # measured but not logged: kept in a file, not lost
        from bench.tracking.records import keep_unlogged

        path = keep_unlogged(rows, "profile")
        raise MbsbenchError(f"MLflow logging failed for {len(unlogged)} of {len(rows)} profiles "
                            f"({unlogged[0]['log_error']}); every row is in {path}")
    text = render(rows)
    if refused:  # the rows stay on stdout and in the store; the command says it refused their times
        print(text)
        raise MbsbenchError(f"--strict-timing refused the times of {', '.join(refused)}: other processes used the "
                            "CPU while timing (see the reason); rerun on an idle machine, or with fewer --threads")
    return text


def cmd_profile(args: argparse.Namespace) -> str:
    from bench.devices import resolve_device
    from variants.registry import all_names, build_config, parse_overrides

    overrides = parse_overrides(args.set)
    names_ = all_names() if args.all else [args.variant] if args.variant else []
    for name in names_:
        build_config(name, **overrides)  # every name and field checked before torch is imported
    device = resolve_device(args.device)
    if args.compile:
        from bench.compiling import check_compile
        from variants.errors import MbsbenchError

        if args.compare is not None or args.top_ops is not None or args.ops_only:
            raise MbsbenchError("--compile: times a profile's steps (--variant or --all), not --compare, --top-ops "
                                "or --ops-only")

        check_compile(args.compile, device)
    uri = tracking_uri(args) if args.top_ops is None and args.compare is None else None
    settings = profile_settings(args, device)
    if args.top_ops is not None:
        return _top_ops(args, settings, overrides)
    if args.compare is not None:
        return _compare(args, settings, overrides)
    return profile_named(names_, overrides, settings, uri, args.format)


def _compare(args: argparse.Namespace, settings, overrides: dict) -> str:
    from bench.devices import device_name
    from bench.profiling.profile import COMPARE_VARIANTS, compare_scans
    from bench.profiling.scans import step_scans
    from bench.text import format_table

    names_ = [args.compare] if args.compare else list(COMPARE_VARIANTS)
    scans = step_scans(settings.device, args.scans)
    rows = compare_scans(names_, scans, list(args.chunks or (32,)), settings, overrides)
    if args.format == "json":
        return json.dumps(rows, indent=2)
    columns = ["variant", "scan", "chunk", "infer_step_s", "train_step_s", "rtf_infer", "rtf_train",
               "peak_mem_train_mib", "ops_train_step", "timing"]
    head = f"device: {device_name(settings.device)}, batch {settings.batch}, {settings.seconds} s, median of "
    head += f"{settings.repeats} after {settings.warmup} warm-up; each row in a fresh process\n"
    return head + format_table(rows, columns, columns[2:])


def _top_ops(args: argparse.Namespace, settings, overrides: dict) -> str:
    from bench.devices import device_name
    from bench.profiling.timing import top_ops_table
    from bench.profiling.workload import measured_model
    from variants.errors import MbsbenchError
    from variants.registry import build_config

    if not args.variant:
        raise MbsbenchError("--top-ops needs --variant NAME: one model's steps are profiled")
    cfg = build_config(args.variant, **overrides)
    model = measured_model(cfg, settings.device)
    s = settings
    parts = []
    for mode in ("train", "infer"):
        title = f"{args.variant}, {mode} step, batch {s.batch}, {s.seconds} s, {device_name(s.device)}, scan={cfg.scan}"
        parts.append(f"{title}\n{top_ops_table(model, cfg, s, mode, args.top_ops)}")
    return "\n".join(parts)


def cmd_scan(args: argparse.Namespace) -> str:
    from bench.devices import device_name, resolve_device
    from bench.profiling.scans import bench_scan_names, bench_scans, model_shapes

    device = resolve_device(args.device)
    uri = tracking_uri(args)
    shapes = model_shapes(args.batch, args.frames)
    rows: list[dict] = []
    kept = "rows measured, printed above (not logged)"
    with rows_kept_on_interrupt(rows, lambda done: _scan_text(done, args, device), kept):
        bench_scans(shapes, bench_scan_names(device, args.scans), args.chunk, args.repeats, device,
                    check=not args.no_check, rows=rows)
    if uri:
        from bench.tracking.records import keep_unlogged, logged_or_kept, record_scan_bench

        settings = {k: getattr(args, k) for k in ("batch", "frames", "chunk", "repeats")}
        logged_or_kept(lambda: record_scan_bench(rows, uri, device_name(device), settings),
                       lambda: keep_unlogged(rows, "scan"))
    return _scan_text(rows, args, device)


def _scan_text(rows: list[dict], args: argparse.Namespace, device: str) -> str:
    from bench.devices import device_name
    from bench.text import format_table

    if args.format == "json":
        return json.dumps({"device": device_name(device), "chunk_size": args.chunk, "rows": rows}, indent=2)
    columns = ["shape", "scan", "b", "l", "d", "n", "fwd_s", "fwd_bwd_s", "saved_mib", "peak_live_mib", "timing"]
    columns += [] if args.no_check else ["max_rel_err"]
    head = f"device: {device_name(device)}, float32, chunk {args.chunk}, median of {args.repeats} after warm-up\n"
    return head + format_table(rows, columns, right=[c for c in columns if c not in ("shape", "scan")])


def add_profile_flags(p: argparse.ArgumentParser, batch: int = 6, seconds: float = 2.0) -> None:
    """The conditions of a profile: batch, seconds, dtype, budget, repeats, curve lengths, RSS."""
    p.add_argument("--batch", type=positive_int, default=batch, help=f"utterances per batch (default {batch})")
    p.add_argument("--seconds", type=above(0.032, " s (one STFT frame)"), default=seconds,
                   help=f"audio per utterance in seconds (default {seconds})")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="float32, or bfloat16 under autocast (default float32)")
    p.add_argument("--budget-gb", type=above(0), default=12.0,
                   help="memory budget in GiB for the max batch (default 12: the reference's GPU)")
    p.add_argument("--lengths", type=comma_list(float, 0.033), help="extra seconds for the memory-vs-length curve, "
                                                                      "e.g. 1,2,4,8")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed repeats after one warm-up (default 3)")
    p.add_argument("--rss", action=argparse.BooleanOptionalAction, default=False,
                   help="also the peak resident set of each step in a fresh process (about 12 s a step on 2 cores; "
                        "default off: the live-tensor peak is the memory figure)")
    p.add_argument("--predict", action="store_true", help="also bench plan's predicted CUDA peaks (Triton scan) at "
                                                          "--batch and --seconds and max batch within --budget-gb "
                                                          "(a few seconds more per variant, no GPU needed)")


def add_ops_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ops-only", action="store_true",
                   help="parameters, MACs and the ops one step dispatches, nothing timed: counts a scan=triton "
                        "step on a machine without CUDA (its kernels counted, not run)")


def add_measure_commands(sub) -> None:
    """Register profile and scan."""
    p = add_command(sub, "profile", "params, MACs, peak memory, max batch, throughput; logged to MLflow",
                    "  python -m bench profile --variant optimized\n"
                    "  python -m bench profile --all --seconds 1 --batch 1\n"
                    "  python -m bench profile --compare --batch 1 --seconds 2 --chunks 16,32,64,128\n"
                    "  python -m bench profile --variant original --set scan=chunked_ckpt --batch 1 --top-ops 15",
                    cmd_profile)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--variant", help="registered name, e.g. original+expand1 (python -m bench list)")
    which.add_argument("--all", action="store_true", help="every registered variant and single change")
    which.add_argument("--compare", nargs="?", const="", metavar="VARIANT",
                       help="step times and training memory with each scan, each in a fresh process: "
                            "original, optimized, optimized_a, bsrnn, or VARIANT")
    add_set(p)
    add_profile_flags(p)
    add_ops_flag(p)
    add_device(p)
    p.add_argument("--strict-timing", action="store_true", help="refuse a row timed while other processes used "
                   "half a core or more (its times dropped, status 'refused', exit 2); without it such a row is "
                   "marked 'busy' in the timing column")
    add_compile(p, "also time the steps under torch.compile (inductor) in MODE: default, reduce-overhead (CUDA "
                   "graphs) or max-autotune; the first call of each step is compile_s, apart from the step times (on "
                   "a CPU it compiles for minutes and runs slower: see the README)")
    p.add_argument("--scans", type=names, help="--compare: comma-separated scans (default: every available one)")
    p.add_argument("--chunks", type=comma_list(int, 1), help="--compare: chunk sizes, e.g. 16,32,64,128 "
                                                             "(default 32)")
    p.add_argument("--top-ops", type=positive_int, metavar="N",
                   help="with --variant: torch.profiler's N costliest ops of one training and one inference step"
                        " (printed, not logged)")
    add_tracking(p)
    add_format(p)
    p = add_command(sub, "scan", "every selective-scan implementation: time, memory, error vs float64",
                    "  python -m bench scan\n  python -m bench scan --scans naive,chunked_ckpt --frames 1000",
                    cmd_scan)
    p.add_argument("--batch", type=positive_int, default=1, help="utterances (sequences = batch x 31 bands)")
    p.add_argument("--frames", type=positive_int, default=251, help="time steps of the time scans (251 = 2 s)")
    p.add_argument("--chunk", type=positive_int, default=32, help="chunk size of the chunked scans (default 32)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed repeats after one warm-up (default 3)")
    p.add_argument("--scans", type=names, help="comma-separated subset, e.g. naive,chunked_ckpt")
    add_device(p)
    p.add_argument("--no-check", action="store_true", help="skip the float64 reference comparison")
    add_tracking(p)
    add_format(p)

