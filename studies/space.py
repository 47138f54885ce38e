"""Search spaces: each knob declared once (range, type, scale) and checked against ModelConfig."""

import itertools
from dataclasses import dataclass

from variants.config import ModelConfig, field_types
from variants.errors import MbsbenchError, did_you_mean


@dataclass(frozen=True)
class Knob:
    """One searchable ModelConfig field: choices for a discrete knob, or a (low, high) range."""

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

    @property
    def discrete(self) -> bool:
        return bool(self.choices)

    def suggest(self, trial):
        """The trial's value for this knob."""
        if self.discrete:
            return trial.suggest_categorical(self.name, list(self.choices))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


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


def parse_space(text: str, overrides: dict[str, tuple] | None = None) -> list[Knob]:
    """'d_state,chunk_size' -> knobs; overrides replace a knob's choices (e.g. from --choices)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise MbsbenchError("--space is empty; name knobs, e.g. --space d_state,chunk_size")
    knobs = []
    for name in names:
        if name not in KNOBS:
            raise MbsbenchError(f"unknown knob {name!r}{did_you_mean(name, KNOBS)}; known: {', '.join(KNOBS)}")
        knob = KNOBS[name]
        if overrides and name in overrides:
            knob = Knob(name, choices=overrides[name]) if overrides[name] else Knob(name, low=1, high=1)
        knobs.append(knob)
    return knobs


def grid(knobs: list[Knob]) -> list[dict]:
    """Every combination of discrete knobs."""
    return [dict(zip([k.name for k in knobs], values)) for values in itertools.product(*(k.choices for k in knobs))]


def check_values(base: ModelConfig, params: dict) -> ModelConfig:
    """The base config with the trial's values (validated by ModelConfig)."""
    from dataclasses import replace

    return replace(base, **params)
