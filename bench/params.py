"""Parameter counts: per variant and per module, down to the block level."""

from dataclasses import asdict, dataclass

import torch
from torch import nn

from bench.text import format_table
from variants.config import ModelConfig
from variants.registry import build_model, count_params, describe, list_variants, resolve

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


def _counts(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def param_rows(model: nn.Module, max_depth: int = 4) -> list[ParamRow]:
    """Per-module rows, parents before children; long per-band lists collapse to one row."""
    rows = [ParamRow("(total)", type(model).__name__, 0, *_counts(model))]

    def visit(module: nn.Module, prefix: str, depth: int) -> None:
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
    """param_rows of a config's model, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = build_model(cfg)
    return param_rows(model, max_depth)


def variant_summaries(pattern: str = "*") -> list[dict]:
    """One dict per registered variant matching pattern: name, params, description."""
    names = list_variants(pattern)
    return [{"name": n, "params": count_params(resolve(n)), "description": describe(n)} for n in names]


def format_param_rows(title: str, rows: list[ParamRow]) -> str:
    """A title line, then the per-module table with children indented under their parents."""
    shown = [{**asdict(r), "module": "  " * max(r.depth - 1, 0) + r.module} for r in rows]
    return title + "\n" + format_table(shown, ["module", "kind", "params"], right=["params"])
