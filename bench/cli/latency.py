"""`bench latency`: which variants can stream, and their algorithmic latency, measured by an impulse probe."""

import argparse
import json

from bench.cli.common import add_command, add_format, add_set, positive_int


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
