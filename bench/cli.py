"""The shared shell of every CLI: parse, run one handler, print; a user mistake is one line and exit 2."""

import argparse
import sys


def run_main(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse argv, call args.func(args), print its text; MbsbenchError -> 'error: ...' on stderr, 2."""
    from variants.errors import MbsbenchError

    args = parser.parse_args(argv)
    try:
        print(args.func(args))
    except MbsbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
