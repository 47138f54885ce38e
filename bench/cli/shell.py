"""The shell of every CLI: parse, run one handler, print its result.

A user mistake is one line on stderr and exit 2; Ctrl-C (or SIGTERM) is one line saying what was
kept and exit 130 (143); results go to stdout only.
"""

import argparse
import atexit
import errno
import importlib.metadata
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from bench.invocation import reproduce_command, set_command


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block), no silent abbreviations of long flags, no empty values."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _get_value(self, action: argparse.Action, arg_string: str):
        # argparse passes string defaults through here too: no flag of ours has "" as its default (a test checks)
        if arg_string == "" and action.choices is None:  # never silently the default, nor "here" for --queue ''
            name = action.option_strings[-1] if action.option_strings else action.dest
            raise argparse.ArgumentError(None, f"argument {name}: '': expected a non-empty value")
        return super()._get_value(action, arg_string)

    def error(self, message: str):
        print(f"error: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def one_line(message: str) -> str:
    """argparse's message in our form: '--batch 0: expected ...', "--format 'x': expected one of ..."."""
    checked = re.fullmatch(r"argument (\S+): (.*?): (expected .*)", message)
    if checked:
        return f"{checked[1].split('/')[-1]} {checked[2]}: {checked[3]}"
    choice = re.fullmatch(r"argument (\S+): invalid choice: (.*) \(choose from (.*)\)", message)
    if choice:
        return f"{choice[1].split('/')[-1]} {choice[2]}: expected one of {choice[3].replace(chr(39), '')}"
    return message.removeprefix("argument ")


def version_text() -> str:
    try:
        return f"mbsbench {importlib.metadata.version('mbsbench')}"
    except importlib.metadata.PackageNotFoundError:
        return "mbsbench (not installed)"


def make_root(prog: str, description: str, examples: str) -> tuple[OneLineParser, argparse._SubParsersAction]:
    """The top-level parser of a CLI, with --version, its subcommand table and examples under --help."""
    parser = OneLineParser(prog=prog, description=description, epilog="examples:\n" + examples,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_text())
    return parser, parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                         help=f"what to do ({prog} COMMAND --help for its flags)")


def _terminate(signum, _frame) -> None:
    from bench.interrupts import Interrupted

    raise Interrupted("", signum)


def run_main(make_parser: Callable[[], argparse.ArgumentParser], argv: list[str] | None = None) -> int:
    """Parse argv, call args.func(args), print its text; MbsbenchError -> 'error: ...' on stderr, 2."""
    from bench.console import set_verbosity
    from bench.tracking.store import forget_clients
    from variants.errors import MbsbenchError

    parser = make_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what was typed (bench run --nproc relaunches it)
    set_command(reproduce_command(parser.prog, args.argv))  # every run this command makes carries it
    set_verbosity(getattr(args, "verbosity", 0))
    if hasattr(args, "threads"):  # every command that computes: before torch computes anything
        from bench.devices import use_threads
        from bench.malloc import tune_malloc

        args.threads = use_threads(args.threads, getattr(args, "nproc", None) or 1)
        tune_malloc()
    forget_clients()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        text = args.func(args)
    except MbsbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: disk full: no space left to write {err.filename or 'a file'}; what was written before is "
              "kept", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        kept = getattr(err, "kept", "")
        print(f"interrupted{': ' + kept if kept else ''}", file=sys.stderr)
        return 128 + getattr(err, "signum", signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
        set_command("")
    if text:
        print(text)
    return 0


def exit_now(code: int) -> NoReturn:
    """Exit with `code` as a normal exit would (other threads joined, atexit handlers run, output flushed) but
    without the interpreter's teardown of every module: 0.8-1.4 s here once torch, dynamo and mlflow are loaded,
    and nothing of a command's results is in it (runs are ended, files closed, by then)."""
    threading._shutdown()  # what the interpreter does first: thread pools told to stop, other threads joined
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader left (| head): exit as the interpreter does when its final flush fails
        code = code or 120
    os._exit(code)
