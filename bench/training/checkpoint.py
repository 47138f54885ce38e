"""Checkpoints: a model's weights with the config and variant name that built it."""

from pathlib import Path

import torch
from torch import nn

from variants.config import EXECUTION_FIELDS, ModelConfig
from variants.errors import MbsbenchError


def save_checkpoint(path: Path, model: nn.Module, cfg: ModelConfig, variant: str, extra: dict | None = None) -> None:
    """Write weights, config fields and variant name (atomically: temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"variant": variant, "config": cfg.to_dict(), "state_dict": model.state_dict()} | (extra or {}), temp)
    temp.replace(path)


def load_checkpoint(path: Path, cfg: ModelConfig, variant: str, model: nn.Module) -> dict:
    """Load weights into model; a checkpoint of another config is an error naming the differences."""
    if not Path(path).is_file():
        raise MbsbenchError(f"checkpoint {path}: no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
        saved = data["config"]
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise MbsbenchError(f"checkpoint {path}: not an mbsbench checkpoint ({type(err).__name__})") from None
    ours = cfg.to_dict()
    differ = [k for k in ours if k not in EXECUTION_FIELDS and saved.get(k) != ours[k]]
    if differ:
        fields = ", ".join(f"{k}={saved.get(k)!r} (here {ours[k]!r})" for k in differ[:4])
        raise MbsbenchError(f"checkpoint {path} was trained as {data.get('variant')!r}, not {variant!r}: {fields}")
    model.load_state_dict(data["state_dict"])
    return data
