"""The command that reproduces a run: what was typed, less the flags that say where results go or how much
is printed. The shell sets it once per command; every run's tags carry it; the tables build their reproduce
lines from it."""

import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager

# flags (each with a value) that choose where results, queues and stores are, never what is computed
PLACE_FLAGS = ("--tracking-uri", "--out", "--storage", "--queue", "--heartbeat", "--grace")
# switches that change what is printed or kept, never the numbers (a resumed run equals an uninterrupted one)
QUIET_SWITCHES = ("--no-track", "--resume", "--overwrite", "--retry-failed", "-q", "--quiet", "-v", "--verbose")

_current = ""


def _dropped(argv: list[str]) -> list[str]:
    queued = any(a == "--queue" or a.startswith("--queue=") for a in argv)
    with_value = PLACE_FLAGS + (("--study-name",) if queued else ())  # a queue's name, not the runs'
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in with_value:
            skip = True
        elif arg not in QUIET_SWITCHES and not arg.startswith(tuple(f"{f}=" for f in with_value)):
            kept.append(arg)
    return kept


def reproduce_command(prog: str, argv: list[str]) -> str:
    """The command line that computes the same numbers into the current store and folder.

    `studies create` becomes `studies search` (same flags: create, then work here); `bench ablate --queue`
    becomes `bench ablate` (the queued runs, run here); a torchrun rank names its `--nproc`.
    """
    kept = _dropped(list(argv))
    if prog.endswith("studies") and kept[:1] == ["create"]:
        kept[0] = "search"
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and not any(a == "--nproc" or a.startswith("--nproc=") for a in kept):
        kept += ["--nproc", str(world)]
    return shlex.join([*prog.split(), *kept])


def set_command(command: str) -> None:
    global _current
    _current = command


def current_command() -> str:
    return _current


def command_tags() -> dict[str, str]:
    """{'command': ...} for a run's tags, or {} where no command line is behind the run (a library call)."""
    return {"command": _current} if _current else {}


@contextmanager
def commanded_by(command: str) -> Iterator[None]:
    """Runs made inside carry `command` (a study's worker runs trials the study's creator asked for)."""
    before = _current
    set_command(command or before)
    try:
        yield
    finally:
        set_command(before)
