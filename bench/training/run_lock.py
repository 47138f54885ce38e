"""One process per run folder: an OS lock held for the run's life, released by the OS when the process ends (a
crash leaves nothing stale). A second run into a held folder is refused with one line naming the holder."""

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.invocation import current_command
from variants.errors import MbsbenchError


def lock_path(folder: Path) -> Path:
    """Beside the run folder, not in it: --overwrite removes the folder, never the lock a run holds."""
    return folder.parent / f".{folder.name}.lock"


@contextmanager
def hold_run_folder(folder: Path) -> Iterator[None]:
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:  # the lock goes with the descriptor
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise MbsbenchError(f"run folder {folder} is in use by {holder}; wait for it to end, or give another "
                                "--out") from None
        handle.seek(0)
        handle.truncate()
        command = current_command()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}" + (f" ({command})" if command else ""))
        handle.flush()
        yield


@contextmanager
def hold_run_folders(folders: list[Path]) -> Iterator[None]:
    """Every folder held, or none (the first held elsewhere refuses the whole request)."""
    with ExitStack() as stack:
        for folder in folders:
            stack.enter_context(hold_run_folder(folder))
        yield
