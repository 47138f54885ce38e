"""Names -> configs: the registered bases, the eight single changes as deltas, composition."""

import fnmatch
import re
from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from variants.config import EXECUTION_FIELDS, ModelConfig, field_types
from variants.errors import MbsbenchError, did_you_mean

if TYPE_CHECKING:  # torch is imported where a model is built, so that names resolve without it
    from torch import nn

ORIGINAL = ModelConfig()

# change name -> {field: (original value, optimized value)}; MODELS.md "The single changes"
CHANGES: dict[str, dict[str, tuple[Any, Any]]] = {
    "chunked_scan": {"scan": ("naive", "chunked")},
    "expand1": {"expand": (2, 1)},
    "unidirectional": {"bidirectional_time": (True, False)},
    "shared_encoder": {"encoder": ("two_branch", "shared")},
    "band_mlp": {"band_mixer": ("bimamba", "mlp")},
    "d_state12": {"d_state": (16, 12)},
    "no_output_net": {"output_net": ("mlp2", "none")},
    "mask_decoder": {"decoder": ("dual_magphase", "mask3tap"), "decoder_hidden": (4, 2)},
}
CHANGE_TEXT: dict[str, str] = {
    "chunked_scan": "chunked selective scan (chunk 32) instead of the full-sequence scan",
    "expand1": "Mamba expand 1 instead of 2",
    "unidirectional": "forward-only temporal Mamba, no combine layer",
    "shared_encoder": "one encoder feeding both paths instead of two branches",
    "band_mlp": "pointwise Linear-LayerNorm-GELU across bands instead of bidirectional Mamba",
    "d_state12": "SSM state size 12 instead of 16",
    "no_output_net": "no output nets (heads) after the encoders",
    "mask_decoder": "complex 3-tap mask decoder (hidden 2N) instead of the dual mag/phase decoder",
}
# single changes toward streaming, composable like the eight (optimized+causal_norm) but not among the eight that
# turn original into optimized, nor in its ablation
CAUSAL_CHANGES: dict[str, dict[str, tuple[Any, Any]]] = {
    "causal_norm": {"band_norm": ("time", "frame")},
    "causal_mask": {"mask_taps": ("centered", "past")},
    "causal_scaling": {"input_scaling": ("utterance", "none")},
}
CAUSAL_TEXT: dict[str, str] = {
    "causal_norm": "band split and band heads normalised per frame instead of over the utterance",
    "causal_mask": "3-tap mask over frames t-2..t instead of t-1..t+1 (no lookahead)",
    "causal_scaling": "input as recorded instead of scaled by the utterance's level (which a stream cannot know)",
}
# the seven changes the seed's proposal names (optimized_design), and the eight the built optimized model has
PROPOSED = ("chunked_scan", "expand1", "unidirectional", "shared_encoder", "band_mlp", "d_state12")
OPTIMIZED_CHANGES = (*PROPOSED, "no_output_net", "mask_decoder")


def lookup(table: dict, key: str, kind: str) -> Any:
    """Return table[key] or raise an error naming close matches."""
    if key in table:
        return table[key]
    hint = did_you_mean(key, table) or f"; known: {', '.join(table)}"
    extra = " (python -m bench list)" if kind == "variant" else ""
    raise MbsbenchError(f"unknown {kind} {key!r}{hint}{extra}")


def apply_change(cfg: ModelConfig, change: str, forward: bool = True) -> ModelConfig:
    """Return cfg with one single change applied (forward) or taken back."""
    pairs = lookup(CHANGES | CAUSAL_CHANGES, change, "change")
    if cfg.arch != "mbsnet" and change not in CAUSAL_CHANGES:  # the causal ones touch layers BSRNN shares
        raise MbsbenchError(f"change {change!r} applies to MBS-Net variants, not arch={cfg.arch!r}")
    pick = 1 if forward else 0
    target = {name: values[pick] for name, values in pairs.items()}
    if all(getattr(cfg, name) == value for name, value in target.items()):
        sign, other = ("+", "-") if forward else ("-", "+")
        raise MbsbenchError(f"'{sign}{change}' changes nothing here ({target}); did you mean '{other}{change}'?")
    return replace(cfg, **target)


def apply_changes(cfg: ModelConfig, changes: tuple[str, ...]) -> ModelConfig:
    """cfg with each named change applied in turn."""
    for change in changes:
        cfg = apply_change(cfg, change)
    return cfg


OPTIMIZED = apply_changes(ORIGINAL, OPTIMIZED_CHANGES)
SEED_BUGS = {"skip_d": "const_d_inner", "dt_bias_init": "zeroed", "scan_clamps": "seed"}

# name -> (config, one-line description)
BASES: dict[str, tuple[ModelConfig, str]] = {
    "original": (ORIGINAL, "MBS-Net original: two bidirectional-Mamba branches, dual mag/phase decoder"),
    "optimized": (OPTIMIZED, "original + the eight changes (reference mbs_net_optimized at main HEAD)"),
    "optimized_a": (
        replace(OPTIMIZED, decoder_hidden=4),
        "optimized with mask decoder hidden 4N (the earlier version trained as '3.95M')",
    ),
    "optimized_design": (
        replace(apply_changes(ORIGINAL, PROPOSED), output_net="linear"),
        "original + the proposed changes, single Linear heads, dual decoder kept (the '2.3M' proposal)",
    ),
    "bsrnn": (
        ModelConfig(arch="bsrnn", feature_dim=64, temporal_layers=5, band_layers=5, decoder="mask3tap"),
        "BSRNN baseline N=64, 5+5 LSTM layers, 3-tap mask decoder",
    ),
    "optimized_causal": (
        apply_changes(OPTIMIZED, tuple(CAUSAL_CHANGES)),
        "optimized + causal_norm + causal_mask + causal_scaling: reads no future beyond the STFT window (streams)",
    ),
    "original_seed": (
        replace(ORIGINAL, dt_bias_init="zeroed"),
        "original as the reference trained it (dt_proj bias zeroed)",
    ),
    "optimized_seed": (
        replace(OPTIMIZED, **SEED_BUGS),
        "optimized as the reference trained it (all three reference bugs)",
    ),
}


def resolve(name: str) -> ModelConfig:
    """Config of a name like 'original', 'original+expand1', 'optimized-shared_encoder'."""
    base, *steps = re.split(r"(?=[+-])", name.strip())
    cfg = lookup({k: v[0] for k, v in BASES.items()}, base, "variant")
    for step in steps:
        if len(step) < 2:
            raise MbsbenchError(f"variant {name!r}: '{step}' needs a change name after it")
        cfg = apply_change(cfg, step[1:], forward=step[0] == "+")
    return cfg


def describe(name: str) -> str:
    """One-line description of a variant name."""
    base, *steps = re.split(r"(?=[+-])", name.strip())
    text = lookup(BASES, base, "variant")[1]
    if not steps:
        return text
    parts = []
    for step in steps:
        change = step[1:]
        if step[0] == "+":
            parts.append(f"with {change}: {lookup(CHANGE_TEXT | CAUSAL_TEXT, change, 'change')}")
        else:
            back = ", ".join(f"{k}={v[0]}" for k, v in lookup(CHANGES | CAUSAL_CHANGES, change, "change").items())
            parts.append(f"without {change} (back to {back})")
    return f"{base} " + "; ".join(parts)


def parse_value(field: str, raw: str) -> Any:
    """Convert the text of one --set value to the type of its ModelConfig field."""
    kind = lookup(field_types(), field, "field")
    try:
        if kind is bool:
            table = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
            return table[raw.strip().lower()]
        if kind is tuple:
            return tuple(int(part) for part in raw.split(","))
        return kind(raw)
    except (KeyError, ValueError):
        expected = {bool: "true or false", tuple: "comma-separated integers", int: "an integer"}
        raise MbsbenchError(f"--set {field}={raw!r}: expected {expected.get(kind, kind.__name__)}") from None


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn ['d_state=12', 'scan=chunked'] into typed overrides."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise MbsbenchError(f"--set {item!r}: expected key=value, e.g. --set d_state=12")
        key, raw = item.split("=", 1)
        out[key.strip()] = parse_value(key.strip(), raw.strip())
    return out


def build_config(name: str, **overrides: Any) -> ModelConfig:
    """Resolve a name and apply overrides; None values are dropped so CLI defaults never shadow."""
    cfg = resolve(name)
    types = field_types()
    for key in overrides:
        lookup(types, key, "field")
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def build_model(cfg: ModelConfig) -> "nn.Module":
    """Instantiate the model a config describes."""
    from variants.bsrnn import BSRNN
    from variants.mbsnet import MBSNet

    return {"mbsnet": MBSNet, "bsrnn": BSRNN}[cfg.arch](cfg)


def build(name: str, **overrides: Any) -> "nn.Module":
    """Build the model of a variant name with optional field overrides."""
    return build_model(build_config(name, **overrides))


def count_params(cfg: ModelConfig) -> int:
    """Number of parameters of a config's model (built once per distinct set of weight shapes)."""
    same_shapes = (*EXECUTION_FIELDS, *SEED_BUGS)
    return _count_params(replace(cfg, **{name: getattr(ORIGINAL, name) for name in same_shapes}))


@lru_cache(maxsize=256)
def _count_params(cfg: ModelConfig) -> int:
    # built on the CPU: the meta device costs more here (2.9 s vs 0.9 s for the 19 registered shapes, most of
    # it importing torch's Python meta kernels), and the largest registered model's weights are 29 MB; the
    # values are never read, so filling them (1 s of a cold `bench list`) is skipped
    with _weights_left_unfilled():
        return sum(p.numel() for p in build_model(cfg).parameters())


def _weights_left_unfilled():
    """A torch function mode in which the in-place fills of weight init (uniform_, normal_, ...) do nothing."""
    from torch.overrides import TorchFunctionMode

    class WeightsLeftUnfilled(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if getattr(func, "__name__", "") in _WEIGHT_FILLS:
                return args[0] if args else kwargs["tensor"]  # torch.nn.init passes the tensor by keyword
            return func(*args, **kwargs)

    return WeightsLeftUnfilled()


_WEIGHT_FILLS = frozenset({"uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                           "xavier_uniform_", "xavier_normal_", "orthogonal_", "constant_", "zeros_",
                           "ones_", "fill_", "zero_", "copy_", "exp_", "log_", "clamp_"})


def single_change_names(base: str, changes: list[str] | None = None) -> list[str]:
    """Each single change on top of a base (original+X) or taken from it (optimized-X); all eight by default."""
    sign = "+" if base.startswith("original") else "-"
    chosen = changes or list(CHANGES)
    for change in chosen:
        lookup(CHANGES, change, "change")
    return [f"{base}{sign}{change}" for change in chosen]


def all_names() -> list[str]:
    """Every registered name: the bases, then each change on top of original and taken from optimized."""
    return list(BASES) + single_change_names("original") + single_change_names("optimized")


def list_variants(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style wildcard ('original+*')."""
    return [name for name in all_names() if fnmatch.fnmatchcase(name, pattern)]
