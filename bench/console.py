"""What goes to stderr and how much: progress bars, status lines, library INFO lines (-q, default, -v).

Results go to stdout; everything here goes to stderr, so piping a command's output stays clean.
"""

import logging
import sys

from tqdm import tqdm

QUIET, NORMAL, VERBOSE = -1, 0, 1
_level = NORMAL


def set_verbosity(level: int) -> None:
    """-q: no progress bars or status lines; -v: also MLflow's and Optuna's INFO lines."""
    global _level
    _level = level


def verbosity() -> int:
    return _level


def status(message: str) -> None:
    """One line on stderr about what is being done (not with -q)."""
    if _level > QUIET:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning on stderr: shown even with -q (it says something about the result)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def progress(total: int | None, desc: str, unit: str):
    """A tqdm bar on stderr: hidden with -q, and when stderr is not a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=True if _level == QUIET else None)


def library_log_level() -> int:
    """The level for MLflow's, alembic's and Optuna's loggers: INFO only with -v."""
    return logging.INFO if _level >= VERBOSE else logging.WARNING
