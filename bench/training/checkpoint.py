"""Checkpoints: a model's weights with the config and variant name that built it."""

import errno
import io
import os
from pathlib import Path

import torch
from torch import nn

from variants.config import ADDED_FIELDS, EXECUTION_FIELDS, ModelConfig
from variants.errors import MbsbenchError


def weights(model: nn.Module, cfg: ModelConfig, variant: str) -> dict:
    """What every checkpoint holds: the weights, the config fields and the variant name that built them."""
    return {"variant": variant, "config": cfg.to_dict(), "state_dict": model.state_dict()}


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a checkpoint (weights(...), with any training state), atomically (write_atomically)."""
    buffer = io.BytesIO()  # serialised here: a full disk is then the file's own OSError, not torch's zip writer's
    torch.save(state, buffer)
    write_atomically(path, buffer.getbuffer())


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """`data` to `path` through a temp file of this process, synced to disk before the rename and the folder
    after it: a crash leaves the old file or the new one. A full disk is a one-line error, the temp removed,
    the old file kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as err:
        temp.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
            again = "--resume continues from last.pt" if (path.parent / "last.pt").exists() else "run again"
            raise MbsbenchError(f"disk full: no space left in {path.parent} to write {path.name} ({len(data)} "
                                f"bytes); {kept}; free space, then {again}") from None
        raise


def read_checkpoint(path: Path, map_location: str = "cpu") -> dict:
    """The saved dict of an mbsbench checkpoint; a one-line error for a missing, truncated or foreign file."""
    if not Path(path).is_file():
        raise MbsbenchError(f"checkpoint {path}: no such file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for a file that is not a checkpoint (EOF, pickle, zip)
        raise MbsbenchError(f"checkpoint {path}: not a readable mbsbench checkpoint ({type(err).__name__}); "
                            "it may be truncated: delete it to start over") from None
    if not isinstance(data, dict) or not {"variant", "config", "state_dict"} <= set(data):
        raise MbsbenchError(f"checkpoint {path}: not an mbsbench checkpoint (no variant, config and weights)")
    return data


def check_same_model(data: dict, path: Path, cfg: ModelConfig, variant: str) -> None:
    """A checkpoint of another config is an error naming the fields that differ."""
    ours, saved = (ADDED_FIELDS | config for config in (cfg.to_dict(), data["config"]))  # absent: the default
    differ = [k for k in ours | saved if k not in EXECUTION_FIELDS and saved.get(k) != ours.get(k)]
    if differ:
        fields = ", ".join(f"{k}={saved.get(k)!r} (here {ours.get(k)!r})" for k in differ[:4])
        raise MbsbenchError(f"checkpoint {path} was trained as {data.get('variant')!r}, not {variant!r}: {fields}")


def load_checkpoint(path: Path, cfg: ModelConfig, variant: str, model: nn.Module) -> dict:
    """Load weights into model; a checkpoint of another config is an error naming the differences."""
    data = read_checkpoint(path)
    check_same_model(data, path, cfg, variant)
    model.load_state_dict(data["state_dict"])
    return data
