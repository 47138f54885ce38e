"""What a study is, kept in the study itself: any worker on any machine rebuilds its objective from it.

A search study varies ModelConfig knobs of a base variant; an ablation study runs (variant, seed)
pairs through bench's normal run (or profile) path. Both are stored as JSON in the study's user
attribute 'mbsbench_spec' when the study is created.
"""

import json
from dataclasses import asdict, dataclass, field

from bench.compiling import unknown_mode
from studies.space import Knob
from variants.errors import MbsbenchError

# objective -> (metric names, directions)
OBJECTIVES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "memory": (("peak_mem_train_mib",), ("minimize",)),
    "time": (("train_step_s",), ("minimize",)),
    "macs": (("macs_g_per_s",), ("minimize",)),
    "params": (("params",), ("minimize",)),
    "pesq": (("val_pesq_wb",), ("maximize",)),
    "multi": (("val_pesq_wb", "peak_mem_train_mib"), ("maximize", "minimize")),
    # ablation studies: each trial one (variant, seed) through bench's run or profile path
    "ablation": (("pesq_wb",), ("maximize",)),
    "ablation_profile": (("peak_mem_train_mib",), ("minimize",)),
}
SEARCH_OBJECTIVES = tuple(name for name in OBJECTIVES if not name.startswith("ablation"))


class TrialFailedError(Exception):
    """A trial that produced no figure: out of memory, NaN loss, unscorable validation."""


@dataclass(frozen=True)
class ObjectiveSettings:
    """Conditions of the figures: device, batch and seconds for profiling, data and budget for training."""

    device: str = "cpu"
    batch: int = 1
    seconds: float = 1.0
    data: str = "synth"
    steps: int | None = 200
    minutes: float | None = None
    train_batch: int = 4
    crop_seconds: float = 1.0
    seed: int = 0
    workdir: str = "studies-runs"
    compile: str | None = None  # torch.compile mode of the time and pesq objectives' models (None: eager)


SAMPLERS = ("grid", "tpe")
SPEC_ATTR = "mbsbench_spec"


@dataclass(frozen=True)
class StudySpec:
    """Everything a worker needs to rebuild the study's objective."""

    name: str
    objective: str  # a key of OBJECTIVES
    kind: str = "search"  # 'search' (knobs of a base) or 'ablation' ((variant, seed) pairs)
    base: str = "optimized"
    knobs: tuple[Knob, ...] = ()
    settings: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    sampler: str = "grid"
    trials: int | None = None  # sampler studies: the budget of trials; grid: at most this many points queued
    tracking_uri: str | None = None
    ablation: dict = field(default_factory=dict)  # kind 'ablation': the RunRequest fields, profile settings

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise MbsbenchError(f"--objective {self.objective!r}: expected one of {', '.join(OBJECTIVES)}")
        if self.sampler not in SAMPLERS:
            raise MbsbenchError(f"--sampler {self.sampler!r}: expected one of {', '.join(SAMPLERS)}")
        if self.sampler == "grid" and not all(knob.discrete for knob in self.knobs):
            ranged = ", ".join(k.name for k in self.knobs if not k.discrete)
            raise MbsbenchError(f"--sampler grid: {ranged} is a range; a grid needs choices (or use --sampler tpe)")
        if reason := unknown_mode(self.compile_mode):
            raise MbsbenchError(reason)
        if self.sampler == "tpe" and self.trials is None:
            raise MbsbenchError("--sampler tpe needs --trials N: the study's budget of trials")

    @property
    def compile_mode(self) -> str | None:
        """The torch.compile mode its trials run under (a search's settings, an ablation's request or profile)."""
        if self.kind != "ablation":
            return self.settings.compile
        return (self.ablation.get("profile") or self.ablation["request"]).get("compile")

    @property
    def metrics(self) -> tuple[str, ...]:
        return OBJECTIVES[self.objective][0]

    @property
    def directions(self) -> tuple[str, ...]:
        return OBJECTIVES[self.objective][1]

    def to_json(self) -> str:
        data = asdict(self) | {"knobs": [knob.to_dict() for knob in self.knobs]}
        return json.dumps(data, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> "StudySpec":
        data = json.loads(text)
        return cls(**(data | {"knobs": tuple(Knob.from_dict(k) for k in data["knobs"]),
                              "settings": ObjectiveSettings(**data["settings"])}))

    def same_study(self, other: "StudySpec") -> bool:
        """Whether `other` describes this study (the trial budget and tracking store may differ)."""
        return not self.differences(other)

    def differences(self, other: "StudySpec") -> list[str]:
        """'KEY: THIS vs OTHER' for each setting that differs (the trial budget and tracking store may)."""
        def flat(value, prefix: str = "") -> dict:
            if not isinstance(value, dict):
                return {prefix: value}
            return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}.{key}" if prefix else key)
                    .items()}

        def core(spec: "StudySpec") -> dict:
            return flat({k: v for k, v in json.loads(spec.to_json()).items() if k not in ("trials", "tracking_uri")})

        mine, theirs = core(self), core(other)
        return [f"{key}: {mine.get(key)!r} vs {theirs.get(key)!r}" for key in sorted(set(mine) | set(theirs))
                if mine.get(key) != theirs.get(key)]


def default_sampler(knobs: tuple[Knob, ...]) -> str:
    """grid when every knob is discrete, tpe when one has a range."""
    return "grid" if all(knob.discrete for knob in knobs) else "tpe"
