"""`bench latency` (which variants stream, their latency, by an impulse probe); `bench stream` (one hop at a time)."""

import argparse
import json
from pathlib import Path

from bench.cli.common import above, add_command, add_format, add_set, add_tracking, positive_int, tracking_uri


def cmd_latency(args: argparse.Namespace) -> str:
    from bench.console import progress
    from bench.profiling.causality import probe
    from bench.text import format_table
    from variants.registry import build_config, build_model, list_variants, parse_overrides

    overrides = parse_overrides(args.set)
    names = list_variants(args.variant) or [args.variant]  # a pattern, or one name (an unknown one is refused)
    configs = {name: build_config(name, **overrides) for name in names}
    rows = []
    with progress(len(configs), "latency", "variant") as bar:
        for name, cfg in configs.items():
            found = probe(build_model(cfg), cfg, tuple(range(args.seeds)))
            rows.append({"variant": name, "streams": "yes" if found.causal else "no (not causal)",
                         "latency_ms": round(found.latency_ms, 2) if found.causal else None,
                         "latency_samples": found.latency_samples if found.causal else None,
                         "reads_ahead": ", ".join(found.reads_ahead) or "-"})
            bar.update(1)
    if args.format == "json":
        return json.dumps(rows, indent=2)
    lines = [f"algorithmic latency measured by an impulse probe (float64, 2 instants x {args.seeds} seeds): the "
             "lookahead of the earliest changed output sample plus one hop; 'reads_ahead' names the innermost "
             "modules whose output changes before their input does",
             format_table(rows, list(rows[0]), ["latency_ms", "latency_samples"])]
    return "\n".join(lines)


def add_latency_command(sub) -> None:
    p = add_command(sub, "latency", "which variants are causal (can stream) and their algorithmic latency",
                    "  python -m bench latency --variant optimized_causal\n"
                    "  python -m bench latency --variant '*'", cmd_latency)
    p.add_argument("--variant", required=True, help="a registered name or a shell pattern ('optimized*', '*')")
    p.add_argument("--seeds", type=positive_int, default=2, help="noise inputs probed, each at two instants "
                                                                 "(default 2)")
    add_set(p)
    add_format(p)


def cmd_stream(args: argparse.Namespace) -> str:
    from bench.console import status
    from bench.profiling.streaming import DNS_LATENCY_MS, StreamSettings, measure_stream
    from bench.text import figure_table
    from bench.tracking.records import record_stream
    from variants.registry import build_config, parse_overrides

    cfg = build_config(args.variant, **parse_overrides(args.set))
    uri = tracking_uri(args)  # checked before the work
    settings = StreamSettings(args.seconds, args.chunk or 0, args.runtime)
    row = {"variant": args.variant} | measure_stream(cfg, settings)
    if uri:
        status(f"logged as MLflow run {record_stream(row, cfg.to_dict(), uri)} in {uri}")
    if args.format == "json":
        return json.dumps(row, indent=2)
    rule = (f"DNS rule (latency <= {DNS_LATENCY_MS:g} ms and every hop computed within its {row['hop_ms']:g} ms, "
            f"batch 1, {row['threads']} thread(s)): {row['dns_rule']}")
    if row["timing_contended"]:
        rule += f"; timed while other processes used {row['timing_other_cores']:.2f} cores: rerun on an idle machine"
    return "\n".join([f"{args.variant} streamed {row['chunk']} samples at a time for {args.seconds:g} s of audio "
                      f"({args.runtime}); compute per hop = a push's time / its hops",
                      figure_table(row, ",.3f"), rule])


def add_stream_command(sub) -> None:
    p = add_command(sub, "stream", "a causal variant stepped one hop at a time: latency, compute per hop, DNS rule",
                    "  python -m bench stream --variant optimized_causal\n"
                    "  python -m bench stream --variant optimized_causal --threads 2 --format json", cmd_stream)
    p.add_argument("--variant", required=True, help="a causal registered name, e.g. optimized_causal "
                                                    "(python -m bench latency --variant '*')")
    p.add_argument("--seconds", type=above(1.0, " s"), default=10.0, help="seconds of audio streamed (default 10)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch's CPU threads (default 1, the DNS rule's)")
    p.add_argument("--chunk", type=positive_int, help="samples per push: a multiple of the hop (default one hop)")
    p.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch",
                   help="what steps the frames: torch, or the exported ONNX step in onnxruntime (default torch)")
    add_set(p)
    add_tracking(p)
    add_format(p)


def cmd_export(args: argparse.Namespace) -> str:
    import torch

    from bench.export import export_onnx
    from variants.registry import build_config, build_model, parse_overrides
    from variants.streaming import FrameStep

    cfg = build_config(args.variant, **parse_overrides(args.set))
    torch.manual_seed(args.seed)  # untrained weights, the same on every export of this seed
    model = build_model(cfg)
    if args.checkpoint:
        from bench.training.checkpoint import load_checkpoint

        load_checkpoint(args.checkpoint, model.cfg, args.variant, model)
    path = export_onnx(FrameStep(model), args.onnx)
    return (f"wrote {path}: {args.variant}'s streaming step (one {model.cfg.n_fft}-sample frame and the state in, the "
            "windowed synthesis frame and the state out; overlap-add it at a hop of "
            f"{model.cfg.hop} and divide by the window envelope, as variants/streaming.py does)")


def add_export_command(sub) -> None:
    p = add_command(sub, "export", "a causal variant's streaming step as an ONNX file (state in, state out)",
                    "  python -m bench export --variant optimized_causal --onnx step.onnx\n"
                    "  python -m bench export --variant optimized_causal --checkpoint runs/x/best.pt --onnx step.onnx",
                    cmd_export)
    p.add_argument("--variant", required=True, help="a causal registered name, e.g. optimized_causal")
    p.add_argument("--onnx", type=Path, required=True, help="the ONNX file to write")
    p.add_argument("--checkpoint", type=Path, help="trained weights (best.pt or last.pt of a bench run)")
    p.add_argument("--seed", type=int, default=0, help="the seed of the untrained weights without --checkpoint "
                                                       "(default 0)")
    add_set(p)
