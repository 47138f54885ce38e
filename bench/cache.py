"""The user cache folder (MBSBENCH_CACHE, else ~/.cache/mbsbench): what is slow to compute and safe to reuse."""

import hashlib
import json
import os
from pathlib import Path


def default_cache() -> Path:
    """MBSBENCH_CACHE, else ~/.cache/mbsbench."""
    return Path(os.environ.get("MBSBENCH_CACHE", Path.home() / ".cache" / "mbsbench"))


def source_digest(folder: Path) -> str:
    """sha256 (16 hex) of every .py file in a folder: a key that changes whenever the code does."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def read_memo(name: str) -> dict:
    """A JSON memo from the cache, or {} when it is missing or unreadable (it is rebuilt)."""
    try:
        return json.loads((default_cache() / name).read_text())
    except (OSError, ValueError):
        return {}


def write_memo(name: str, memo: dict) -> None:
    """Write a JSON memo atomically (temp file, then rename); a read-only cache is skipped."""
    path = default_cache() / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(f".{os.getpid()}.tmp")
        temp.write_text(json.dumps(memo, sort_keys=True))
        temp.replace(path)
    except OSError:
        return
