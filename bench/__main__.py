"""python -m bench: list, params, profile, scan, data, evaluate, metrics, run, ablate."""

import argparse
import json
import sys
from dataclasses import asdict

from bench.cli import run_main
from bench.cli_measure import add_measure_commands
from bench.cli_quality import add_quality_commands
from bench.cli_run import add_run_commands
from bench.params import format_param_rows, model_param_rows, variant_summaries
from bench.text import format_table
from variants.errors import MbsbenchError
from variants.registry import build_config, parse_overrides


def _add_variant_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", required=True, help="registered name, e.g. original+expand1")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("table", "json"), default="table")


def cmd_list(args: argparse.Namespace) -> str:
    rows = variant_summaries(args.pattern)
    if not rows:
        raise MbsbenchError(f"no variant matches {args.pattern!r} (try 'original+*')")
    if args.format == "json":
        return json.dumps(rows, indent=2)
    return format_table(rows, ["name", "params", "description"], right=["params"])


def cmd_params(args: argparse.Namespace) -> str:
    cfg = build_config(args.variant, **parse_overrides(args.set))
    rows = model_param_rows(cfg, args.depth)
    if args.format == "json":
        modules = [asdict(r) for r in rows]
        return json.dumps({"variant": args.variant, "config": cfg.to_dict(), "modules": modules}, indent=2)
    title = f"{args.variant}: {rows[0].params:,} parameters ({rows[0].trainable:,} trainable)"
    return format_param_rows(title, rows)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="mbsbench: measure MBS-Net variants")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="every registered variant, one line each")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'original+*'")
    _add_format(p)
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("params", help="parameter table per module")
    _add_variant_args(p)
    p.add_argument("--depth", type=int, default=4, help="deepest module level shown (default 4: blocks)")
    _add_format(p)
    p.set_defaults(func=cmd_params)
    add_quality_commands(sub, _add_format)
    add_run_commands(sub, _add_format)
    add_measure_commands(sub, _add_format)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
