"""python -m reports: tables (Markdown / LaTeX) and plots (PNG and PDF) from what MLflow holds."""

import argparse
import sys
from pathlib import Path

from bench.cli.common import add_command, add_tracking
from bench.cli.shell import make_root, run_main
from bench.training.request import check_writable

FORMATS = ("md", "latex")


def _store(args: argparse.Namespace):
    from bench.tracking.store import client, resolve_uri
    from reports.collect import load_store

    uri = resolve_uri(args.tracking_uri)
    client(uri, read_only=True)
    return load_store(uri)


def cmd_tables(args: argparse.Namespace) -> str:
    from reports.render import RENDERERS
    from reports.tables import all_tables

    render, suffix = RENDERERS[args.format]
    texts = [(table.name, render(table)) for table in all_tables(_store(args), args.device or "")]
    if args.out:
        from bench.console import status

        folder = Path(args.out)
        check_writable(folder)
        for name, text in texts:
            (folder / f"{name}{suffix}").write_text(text)
        status(f"wrote {len(texts)} tables to {folder}: {', '.join(f'{name}{suffix}' for name, _ in texts)}")
    return "\n".join(text for _, text in texts)


def cmd_plots(args: argparse.Namespace) -> str:
    from reports.plots import make_plots

    check_writable(Path(args.out))  # before the store is read
    written, left_out = make_plots(_store(args), Path(args.out))
    return "\n".join([*(str(p) for p in written), *left_out] if written else ["nothing to plot yet", *left_out])


def make_parser() -> argparse.ArgumentParser:
    parser, sub = make_root("python -m reports", "paper tables and plots from MLflow",
                              "  python -m reports tables\n  python -m reports plots --out paper/\n"
                              "  python -m reports COMMAND --help")
    p = add_command(sub, "tables", "main, ablation, claimed vs measured, literature, studies",
                    "  python -m reports tables\n  python -m reports tables --format latex --out paper/", cmd_tables)
    p.add_argument("--format", choices=FORMATS, default="md", help="md (Markdown) or latex (booktabs); default md")
    p.add_argument("--out", help="folder for one file per table (default: print only)")
    p.add_argument("--device", help="only profiles and runs of devices whose name contains this, "
                                                "e.g. H200 (default: one set of tables per device)")
    add_tracking(p, optional=False)
    p = add_command(sub, "plots", "Pareto fronts, memory vs length, training curves, study history and importances",
                    "  python -m reports plots --out paper/", cmd_plots)
    p.add_argument("--out", required=True, help="folder for the PNG and PDF files")
    add_tracking(p, optional=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(make_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
