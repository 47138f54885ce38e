"""python -m reports: tables (Markdown / LaTeX) and plots (PNG and PDF) from what MLflow holds."""

import argparse
import sys
from pathlib import Path

from bench.cli import run_main
from reports.collect import load_store
from reports.render import RENDERERS
from reports.tables import all_tables


def cmd_tables(args: argparse.Namespace) -> str:
    from bench.tracking import check_reachable, resolve_uri

    uri = resolve_uri(args.tracking_uri)
    check_reachable(uri)
    render, suffix = RENDERERS[args.format]
    texts = [(table.name, render(table)) for table in all_tables(load_store(uri))]
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in texts:
            (folder / f"{name}{suffix}").write_text(text)
    return "\n".join(text for _, text in texts)


def cmd_plots(args: argparse.Namespace) -> str:
    from bench.tracking import check_reachable, resolve_uri
    from reports.plots import make_plots

    uri = resolve_uri(args.tracking_uri)
    check_reachable(uri)
    written = make_plots(load_store(uri), Path(args.out), args.storage)
    return "\n".join(str(p) for p in written) if written else "nothing to plot yet"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reports", description="paper tables and plots from MLflow")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("tables", help="main, ablation, claimed vs measured, literature, studies")
    p.add_argument("--format", choices=tuple(RENDERERS), default="md")
    p.add_argument("--out", help="folder for one file per table")
    p.add_argument("--tracking-uri")
    p.set_defaults(func=cmd_tables)
    p = sub.add_parser("plots", help="Pareto fronts, memory vs length, training curves, study history")
    p.add_argument("--out", required=True)
    p.add_argument("--tracking-uri")
    p.add_argument("--storage", help="Optuna storage of the studies, for importance plots")
    p.set_defaults(func=cmd_plots)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
