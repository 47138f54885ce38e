"""`bench list` and `bench params`: the registered variants and their parameter tables."""

import argparse
import json

from bench.cli.common import add_command, add_format, add_variant, at_least


def cmd_list(args: argparse.Namespace) -> str:
    from bench.profiling.params import variant_summaries
    from bench.text import format_table
    from variants.errors import MbsbenchError

    rows = variant_summaries(args.pattern)
    if not rows:
        raise MbsbenchError(f"no variant matches {args.pattern!r} (try 'original+*')")
    if args.format == "json":
        return json.dumps(rows, indent=2)
    return format_table(rows, ["name", "params", "description"], right=["params"])


def cmd_params(args: argparse.Namespace) -> str:
    from dataclasses import asdict

    from bench.profiling.params import format_param_rows, model_param_rows
    from variants.registry import build_config, parse_overrides

    cfg = build_config(args.variant, **parse_overrides(args.set))
    rows = model_param_rows(cfg, args.depth)
    if args.format == "json":
        modules = [asdict(r) for r in rows]
        return json.dumps({"variant": args.variant, "config": cfg.to_dict(), "modules": modules}, indent=2)
    title = f"{args.variant}: {rows[0].params:,} parameters ({rows[0].trainable:,} trainable)"
    return format_param_rows(title, rows)


def add_model_commands(sub) -> None:
    """Register list and params."""
    p = add_command(sub, "list", "every registered variant, one line each",
                    "  python -m bench list\n  python -m bench list 'original+*' --format json", cmd_list)
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'original+*' (default: all)")
    add_format(p)
    p = add_command(sub, "params", "parameter table per module, down to the blocks",
                    "  python -m bench params --variant original\n"
                    "  python -m bench params --variant optimized --set d_state=16 --format json", cmd_params)
    add_variant(p)
    p.add_argument("--depth", type=at_least(1), default=4, help="deepest module level shown (default 4: blocks)")
    add_format(p)
