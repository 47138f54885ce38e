"""Search spaces: each knob declared once (choices or a range) and every value checked against ModelConfig."""

import itertools
from dataclasses import dataclass, replace

from variants.config import ModelConfig, field_types
from variants.errors import MbsbenchError, did_you_mean


@dataclass(frozen=True)
class Knob:
    """One searchable ModelConfig field: choices (a discrete knob), or a [low, high] range of its type."""

    name: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False

    def __post_init__(self) -> None:
        types = field_types()
        if self.name not in types:
            raise MbsbenchError(f"knob {self.name!r} is not a ModelConfig field{did_you_mean(self.name, types)}")
        if not self.choices and (self.low is None or self.high is None or not self.low < self.high):
            raise MbsbenchError(f"knob {self.name!r}: empty range [{self.low}, {self.high}]")
        for value in self.choices:
            if not isinstance(value, types[self.name]):
                raise MbsbenchError(f"knob {self.name!r}: choice {value!r} is not a {types[self.name].__name__}")
        if not self.choices and types[self.name] not in (int, float):
            raise MbsbenchError(f"knob {self.name!r}: a range needs a numeric field, not {types[self.name].__name__}")

    @property
    def discrete(self) -> bool:
        return bool(self.choices)

    def suggest(self, trial):
        """The trial's value for this knob."""
        if self.discrete:
            return trial.suggest_categorical(self.name, list(self.choices))
        if field_types()[self.name] is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def to_dict(self) -> dict:
        return {"name": self.name, "choices": list(self.choices), "low": self.low, "high": self.high, "log": self.log}

    @classmethod
    def from_dict(cls, data: dict) -> "Knob":
        return cls(data["name"], tuple(data["choices"]), data["low"], data["high"], data["log"])


KNOBS: dict[str, Knob] = {
    knob.name: knob
    for knob in (
        Knob("d_state", choices=(4, 8, 12, 16, 24, 32)),
        Knob("chunk_size", choices=(8, 16, 32, 64, 128)),
        Knob("expand", choices=(1, 2)),
        Knob("d_conv", choices=(2, 3, 4, 5)),
        Knob("feature_dim", choices=(32, 48, 64, 96, 128)),
        Knob("temporal_layers", choices=(1, 2, 3, 4, 6)),
        Knob("decoder_hidden", choices=(1, 2, 3, 4)),
        Knob("bidirectional_time", choices=(False, True)),
        Knob("band_mixer", choices=("mlp", "bimamba")),
    )
}


def parse_space(text: str, choices: dict[str, tuple] | None = None,
                ranges: dict[str, tuple] | None = None) -> list[Knob]:
    """'d_state,chunk_size' -> knobs; --choices replace a knob's values, --range makes it a [low, high] range."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise MbsbenchError("--space is empty; name knobs, e.g. --space d_state,chunk_size")
    knobs = []
    for name in names:
        if name not in KNOBS:
            raise MbsbenchError(f"unknown knob {name!r}{did_you_mean(name, KNOBS)}; known: {', '.join(KNOBS)}")
        knob = KNOBS[name]
        if choices and name in choices:
            knob = Knob(name, choices=choices[name]) if choices[name] else Knob(name, low=1, high=1)
        if ranges and name in ranges:
            knob = Knob(name, low=ranges[name][0], high=ranges[name][1])
        knobs.append(knob)
    for extra in set(choices or {}) | set(ranges or {}):
        if extra not in names:
            raise MbsbenchError(f"--choices/--range {extra!r}: not a knob of --space {text!r}")
    return knobs


def check_space(base: ModelConfig, knobs: list[Knob]) -> None:
    """Every choice (and both ends of every range) is a valid config of the base: errors before any trial."""
    for knob in knobs:
        for value in knob.choices or (knob.low, knob.high):
            check_values(base, {knob.name: type(getattr(base, knob.name))(value)})


def grid(knobs: list[Knob]) -> list[dict]:
    """Every combination of discrete knobs."""
    return [dict(zip([k.name for k in knobs], values)) for values in itertools.product(*(k.choices for k in knobs))]


def check_values(base: ModelConfig, params: dict) -> ModelConfig:
    """The base config with the trial's values (validated by ModelConfig)."""
    return replace(base, **params)
