"""Arguments every CLI shares, declared once, and the value checks that run where a flag is parsed.

A checker raises argparse.ArgumentTypeError('VALUE: expected ...'); the shell prints it as one line,
'--flag VALUE: expected ...', and exits 2 before any work starts.
"""

import argparse
import math
from collections.abc import Callable

DEVICE_HELP = "cpu, cuda, cuda:N or auto (default auto: CUDA when present, else the CPU)"
DATA_HELP = ("synth, synth:SEED, synth:seed=N,train=N,val=N,test=N, vbd:PATH, paired:CLEAN_DIR,NOISY_DIR or folder:DIR "
             "(noisy recordings only: scored by DNSMOS)")


def _bad(text: str, expected: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"{text}: expected {expected}")


def _number(kind: type, text: str, expected: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise _bad(text, expected) from None
    if kind is float and not math.isfinite(value):
        raise _bad(text, expected)
    return value


def at_least(low: float, kind: type = int, high: float | None = None) -> Callable[[str], float]:
    """A checker for numbers >= low (and <= high when given)."""
    expected = f"{'an integer' if kind is int else 'a number'} >= {low}" + (f" and <= {high}" if high else "")

    def check(text: str) -> float:
        value = _number(kind, text, expected)
        if value < low or (high is not None and value > high):
            raise _bad(text, expected)
        return value

    return check


def above(low: float, unit: str = "") -> Callable[[str], float]:
    """A checker for finite numbers > low."""
    expected = f"a number > {low}{unit}"

    def check(text: str) -> float:
        value = _number(float, text, expected)
        if not value > low:
            raise _bad(text, expected)
        return value

    return check


def comma_list(kind: type, low: float | None = None, high: float | None = None) -> Callable[[str], tuple]:
    """A checker for comma-separated numbers (each >= low and <= high when given)."""
    expected = f"comma-separated {'integers' if kind is int else 'numbers'}"
    expected += f" >= {low}" if low is not None else ""
    expected += f" and <= {high}" if high is not None else ""

    def check(text: str) -> tuple:
        items = [item.strip() for item in text.split(",") if item.strip()]
        values = tuple(_number(kind, item, expected) for item in items)
        if not values or (low is not None and min(values) < low) or (high is not None and max(values) > high):
            raise _bad(text, expected)
        return values

    return check


def names(text: str) -> tuple[str, ...]:
    """Comma-separated names, blanks dropped; empty is an error."""
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if not items:
        raise _bad(text, "comma-separated names")
    return items


positive_int = at_least(1)
non_negative_int = at_least(0)
MAX_SEED = 2**31 - 1  # every RNG here takes it, and seed arithmetic (seed * 1_000_003 + step) stays in 64 bits
seed_int = at_least(0, high=MAX_SEED)
DAY_S = 86_400
seconds_int = at_least(1, high=DAY_S)  # a heartbeat or grace past a day is a typo (and past the clock, a crash)


def add_variant(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--variant NAME and --set KEY=VALUE (repeatable)."""
    parser.add_argument("--variant", required=required, help="registered name, e.g. original+expand1 "
                                                             "(python -m bench list)")
    add_set(parser)


def add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a ModelConfig field, e.g. --set d_state=12 (repeatable)")


def add_device(parser: argparse.ArgumentParser) -> None:
    """--device, and --threads: torch's CPU threads, applied by the shell before the command runs."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--threads", type=positive_int, help="torch's CPU threads (default: the cores this process "
                        "may use, honouring CPU affinity and a container's CPU quota); lower it, e.g. to 1, when "
                        "other work shares the cores: threads that spin against another process slow a step 15x")


def add_tracking(parser: argparse.ArgumentParser, optional: bool = True) -> None:
    """--tracking-uri, and --no-track where logging is optional."""
    parser.add_argument("--tracking-uri", help="MLflow store: sqlite:///FILE, postgresql://..., http(s)://SERVER "
                                               "(default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    if optional:
        parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")


def add_workers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=non_negative_int, default=0,
                   help="metric processes (default 0: one per core)")


def tracking_uri(args: argparse.Namespace) -> str | None:
    """The checked tracking URI, or None with --no-track: checked before any work starts."""
    if getattr(args, "no_track", False):
        return None
    from bench.tracking.store import client, resolve_uri

    uri = resolve_uri(args.tracking_uri)
    client(uri)  # reachable and usable (schema in place), or a one-line error now
    return uri


def add_compile(parser: argparse.ArgumentParser, help_text: str) -> None:
    """--compile [MODE] (MODE default when the flag is bare); checked against the device before any work."""
    parser.add_argument("--compile", nargs="?", const="default", metavar="MODE", help=help_text)


def add_format(parser: argparse.ArgumentParser, choices: tuple[str, ...] = ("table", "json")) -> None:
    parser.add_argument("--format", choices=choices, default=choices[0], help=f"output format (default {choices[0]})")


def verbosity_parent() -> argparse.ArgumentParser:
    """-q / -v, shared by every subcommand (results on stdout, diagnostics on stderr either way)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=0,
                       help="no progress bars or status lines on stderr")
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1,
                       help="also MLflow's and Optuna's INFO lines")
    return parent


def add_command(sub, name: str, help_text: str, examples: str, func) -> argparse.ArgumentParser:
    """A subcommand with its help, an examples epilog, -q/-v, and its handler."""
    parser = sub.add_parser(name, help=help_text, description=help_text, epilog="examples:\n" + examples,
                            formatter_class=argparse.RawDescriptionHelpFormatter, parents=[verbosity_parent()])
    parser.set_defaults(func=func)
    return parser


def add_dnsmos(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dnsmos", action=argparse.BooleanOptionalAction, default=None,
                   help="DNSMOS P.835 and P.808 (non-intrusive; the [dnsmos] extra); default: where installed for "
                        "evaluate and metrics, off for run")
