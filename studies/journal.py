"""Optuna's journal file, safe against a write cut short: a torn last line (kill, power cut, full disk) is cut
before the next append instead of being glued to it, a bad line is named, and `studies repair` keeps every
complete record of a journal damaged before.

A torn line was never read as a record (Optuna's reader stops at a line without its newline), so cutting it
loses nothing any process saw; its bytes are kept beside the journal all the same.
"""

import json
import os
import time
from pathlib import Path

from optuna.storages.journal import JournalFileBackend

from bench.console import status
from variants.errors import MbsbenchError

RECORD_START = b'{"op_code"'  # how Optuna writes every record (json.dumps of a dict whose first key is op_code)
TAIL_CHUNK = 1 << 16


class TornSafeJournal(JournalFileBackend):
    """Optuna's file backend whose append first cuts a torn last line (under the journal's own lock)."""

    def append_logs(self, logs: list[dict]) -> None:
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
        self._lock.acquire()
        try:
            cut_torn_tail(Path(self._file_path))
            with open(self._file_path, "ab") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            self._lock.release()


def _last_newline(handle, size: int) -> int:
    """The offset just past the file's last newline (0 when it has none)."""
    end = size
    while end > 0:
        start = max(0, end - TAIL_CHUNK)
        handle.seek(start)
        at = handle.read(end - start).rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def cut_torn_tail(path: Path) -> int:
    """Cut a last line without its newline (kept in PATH.torn); the bytes cut (0 for a whole journal)."""
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        keep = _last_newline(handle, size)
        handle.seek(keep)
        torn = handle.read()
        with open(f"{path}.torn", "ab") as kept:
            kept.write(torn + b"\n")
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    status(f"note: journal {path}: cut a torn last line ({len(torn)} bytes, a write cut short; kept in {path}.torn)")
    return len(torn)


def bad_line(path: Path) -> int | None:
    """The number (from 1) of the first complete line that is not a record, or None."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.endswith(b"\n"):
                return None  # a torn last line: read past, cut before the next append
            try:
                json.loads(line)
            except ValueError:
                return number
    return None


def _records(line: bytes) -> list[bytes]:
    """The records in one line: itself, or the record a later append glued onto a torn one."""
    try:
        json.loads(line)
        return [line.rstrip(b"\n") + b"\n"]
    except ValueError:
        pass
    at = line.find(RECORD_START, 1)
    return _records(line[at:]) if at > 0 else []


def repair_journal(path: Path) -> tuple[int, int, Path]:
    """Rewrite the journal with every complete record, in order (a backup first): (records kept, damaged lines,
    backup)."""
    if not path.is_file():
        raise MbsbenchError(f"--storage {path}: no such journal file")
    backend = TornSafeJournal(str(path))
    backend._lock.acquire()
    try:
        backup = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        data = path.read_bytes()
        backup.write_bytes(data)
        lines = data.splitlines(keepends=True)
        found = [_records(line) for line in lines]
        kept = [record for records in found for record in records]
        damaged = sum(records != [line] for records, line in zip(found, lines))
        partial = path.with_name(f"{path.name}.repairing")
        partial.write_bytes(b"".join(kept))
        os.replace(partial, path)
    finally:
        backend._lock.release()
    return len(kept), damaged, backup


def check_journal(path: Path) -> None:
    """A one-line error naming the first bad line of a journal Optuna cannot read."""
    number = bad_line(path)
    if number is not None:
        raise MbsbenchError(f"--storage {path}: line {number} is not a complete record (a write was cut short, then "
                            f"appended to); python -m studies repair --storage {path} keeps every complete record")
