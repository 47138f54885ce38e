"""Ctrl-C and SIGTERM during long work: finish the current step, keep what was done, then stop.

The first signal asks the loop to stop at its next safe point (a training step's end); a second one
interrupts at once. Whatever stops carries `kept`: the one line the CLI prints about what was saved.
"""

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(KeyboardInterrupt):
    """The work was stopped by a signal; `kept` says what was saved, `signum` which signal it was."""

    def __init__(self, kept: str = "", signum: int = signal.SIGINT):
        super().__init__(kept)
        self.kept, self.signum = kept, signum


class StopRequest:
    """Set by the first SIGINT or SIGTERM inside stop_requests()."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Within the block, the first SIGINT/SIGTERM sets the request; the second raises Interrupted at once."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield stop
        return

    def handle(signum, _frame) -> None:
        if stop.requested:
            raise Interrupted("", signum)
        stop.signum = signum

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_kept(err: KeyboardInterrupt, kept: str) -> None:
    """Append to what an interrupt reports as kept (a KeyboardInterrupt from elsewhere gets the attribute)."""
    before = getattr(err, "kept", "")
    err.kept = f"{before}; {kept}" if before else kept


def ignore_interrupts() -> None:
    """In a worker process: Ctrl-C reaches the whole process group, but only the parent should act on it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def interrupt_once() -> StopRequest:
    """For a worker process: the first SIGINT/SIGTERM raises Interrupted and sets the returned request; later
    ones are ignored (they must not break the cleanup). An interrupt that lands in a finalizer, where Python
    can only print it, is not printed: the request stays set and the worker stops at its next safe point."""
    stop = StopRequest()

    def handle(signum, _frame) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        stop.signum = signum
        raise Interrupted("", signum)

    previous_hook = sys.unraisablehook

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous_hook(unraisable)

    sys.unraisablehook = hook
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)
    return stop


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held back while the block runs and delivered as it ends: a step that must not be cut
    in two (a trial taken from a queue, and the variable that holds it). Main thread only; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
