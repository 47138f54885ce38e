"""Parameter counts: per variant and per module, down to the block level.

Importing this module does not import torch: `bench list` answers from a cache of counts when it can.
"""

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import variants
from bench.cache import read_memo, source_digest, write_memo
from bench.text import format_table
from variants.config import ModelConfig
from variants.errors import MbsbenchError
from variants.registry import build_model, count_params, describe, list_variants, resolve

if TYPE_CHECKING:
    from torch import nn

COUNTS_MEMO = "param_counts.json"

# a ModuleList with more children than this (per-band layers) is one row, not one per child
MAX_LISTED_CHILDREN = 8


@dataclass(frozen=True)
class ParamRow:
    """One module of the table: dotted path, class, depth, parameter counts."""

    module: str
    kind: str
    depth: int
    params: int
    trainable: int


def _counts(module: "nn.Module") -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def param_rows(model: "nn.Module", max_depth: int = 4) -> list[ParamRow]:
    """Per-module rows, parents before children; long per-band lists collapse to one row."""
    from torch import nn

    rows = [ParamRow("(total)", type(model).__name__, 0, *_counts(model))]

    def visit(module: "nn.Module", prefix: str, depth: int) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            total, trainable = _counts(child)
            if total == 0:
                continue
            many = isinstance(child, nn.ModuleList) and len(child) > MAX_LISTED_CHILDREN
            kind = f"{len(child)} x {type(child[0]).__name__}" if many else type(child).__name__
            rows.append(ParamRow(path, kind, depth, total, trainable))
            if depth < max_depth and not many:
                visit(child, path + ".", depth + 1)

    visit(model, "", 1)
    return rows


def model_param_rows(cfg: ModelConfig, max_depth: int = 4) -> list[ParamRow]:
    """param_rows of a config's model, built on the meta device (no memory, whatever the size)."""
    import torch

    with torch.device("meta"):
        model = build_model(cfg)
    return param_rows(model, max_depth)


def variant_summaries(pattern: str = "*") -> list[dict]:
    """One dict per registered variant matching pattern: name, params, description.

    Counts are memoised in the cache, keyed by the variants' source code and the config, so that a
    second `bench list` builds nothing (and imports no torch); any change to variants/ rebuilds them.
    """
    names = list_variants(pattern)
    key = source_digest(Path(variants.__file__).parent)
    memo = read_memo(COUNTS_MEMO)
    counts = memo.get(key, {})
    rows = []
    for name in names:
        config = json.dumps(resolve(name).to_dict(), sort_keys=True)
        if config not in counts:
            counts[config] = count_params(resolve(name))
        rows.append({"name": name, "params": counts[config], "description": describe(name)})
    if memo.get(key) != counts:
        write_memo(COUNTS_MEMO, {key: counts})  # only the current code's counts are kept
    return rows


def format_param_rows(title: str, rows: list[ParamRow]) -> str:
    """A title line, then the per-module table with children indented under their parents."""
    shown = [{**asdict(r), "module": "  " * max(r.depth - 1, 0) + r.module} for r in rows]
    return title + "\n" + format_table(shown, ["module", "kind", "params"], right=["params"])


def param_table_text(name: str, cfg: ModelConfig) -> str:
    """The per-module table of a variant under a one-line title."""
    rows = model_param_rows(cfg)
    return format_param_rows(f"{name}: {rows[0].params:,} parameters", rows)


def device_memory_bytes(device: str) -> int:
    """Memory a model's weights could take: the GPU's total, or the memory this machine has available now."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_weights_fit(configs: dict[str, ModelConfig], device: str) -> None:
    """Each model whose float32 weights alone exceed the device's memory is refused before any is built (counted
    on the meta device: nothing allocated)."""
    import torch

    have = device_memory_bytes(device)
    for name, cfg in configs.items():
        with torch.device("meta"):
            params = sum(p.numel() for p in build_model(cfg).parameters())
        if 4 * params > have:
            raise MbsbenchError(f"{name}: {params:,} parameters, {4 * params / 2**30:.1f} GiB of weights alone; "
                                f"{device} has {have / 2**30:.1f} GiB (a field far too large? python -m bench list)")
