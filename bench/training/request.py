"""What to train and where, and every check made before the first step (no torch needed for any of it).

A bad variant, field, budget, dataset, output folder or tracking store is a one-line error here,
seconds before anything is trained, never after.
"""

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from bench.compiling import COMPILE_MODES, check_compile, unknown_mode
from bench.tracking.store import client
from bench.training.distributed import SINGLE, Ranks
from variants.config import ModelConfig
from variants.errors import MbsbenchError
from variants.registry import build_config

# on the embedded corpus: its recipe whatever the budget, and the budget when none is given: a step count, so that
# the same command trains the same model on any machine (240 steps took 5 min on an idle 2-core machine; a wall-clock
# budget of 5 min gave 241 steps idle and 11 under load)
SYNTH_RECIPE = {"batch": 4, "crop_seconds": 1.0, "val_every": 100, "checkpoint_every": 100}
SYNTH_BUDGET = {"steps": 240}
RECIPE_DEFAULTS = {"batch": 6, "crop_seconds": 2.0}  # the reference recipe's batch and crop (MODELS.md)
REFERENCE_BUDGET = {"epochs": 120}  # --recipe reference with no budget given: the reference's 120 epochs
BUDGET = ("epochs", "steps", "minutes")
RECIPES = ("default", "reference")  # reference: batch 6, 2 s crops, MetricGAN on, 120 epochs unless told


@dataclass(frozen=True)
class TrainSettings:
    """Budget and recipe; at least one of epochs, steps, minutes bounds the run (steps win, then epochs)."""

    batch: int = 6
    crop_seconds: float = 2.0
    lr: float = 1e-3
    lr_step_epochs: int = 10
    lr_gamma: float = 0.98
    clip_norm: float = 5.0
    epochs: int | None = None
    steps: int | None = None
    minutes: float | None = None  # of training, counted over every resumed segment
    val_every: int = 50  # steps between validations (and at every epoch end)
    checkpoint_every: int = 50  # steps between resumable checkpoints
    phase_loss: bool = False  # 0.3 RI + 0.3 magnitude + 0.4 wrapped phase, dual decoder only
    seed: int = 0
    precision: str = "fp32"  # fp32, bf16 under autocast (training and inference), or fp64 (exactness checks)
    metricgan: bool = False  # the reference's MetricGAN term, from half-way through the budget
    metricgan_weight: float = 1.0
    world_size: int = 1  # ranks of a torchrun run; each takes batch / world_size of every global batch
    compile: str | None = None  # torch.compile mode of the training step (and of validation where it pays)

    def __post_init__(self) -> None:
        checks = [("batch", self.batch >= 1, "an integer >= 1"),
                  ("crop_seconds", self.crop_seconds > 0.032, "more than one STFT frame (0.032 s)"),
                  ("lr", self.lr > 0 and math.isfinite(self.lr), "a positive number"),
                  ("epochs", self.epochs is None or self.epochs >= 1, "an integer >= 1"),
                  ("steps", self.steps is None or self.steps >= 1, "an integer >= 1"),
                  ("minutes", self.minutes is None or self.minutes > 0, "a positive number"),
                  ("val_every", self.val_every >= 1, "an integer >= 1"),
                  ("checkpoint_every", self.checkpoint_every >= 1, "an integer >= 1"),
                  ("seed", self.seed >= 0, "an integer >= 0"),
                  ("precision", self.precision in ("fp32", "bf16", "fp64"), "fp32, bf16 or fp64"),
                  ("metricgan_weight", self.metricgan_weight > 0, "a positive number"),
                  ("world_size", self.world_size >= 1, "an integer >= 1"),
                  ("compile", not unknown_mode(self.compile), f"one of {', '.join(COMPILE_MODES)}")]
        for name, ok, expected in checks:
            if not ok:
                raise MbsbenchError(f"training {name}={getattr(self, name)!r}: expected {expected}")
        if self.epochs is None and self.steps is None and self.minutes is None:
            raise MbsbenchError("training needs a budget: --epochs, --steps or --minutes")
        if self.batch % self.world_size:
            raise MbsbenchError(f"--batch {self.batch}: the global batch must divide by the world size "
                                f"{self.world_size} (each rank takes an equal share)")


@dataclass(frozen=True)
class RunRequest:
    """What to train: variants x seeds on a dataset, with the budget and recipe, and where to write."""

    variants: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    data: str = "synth"
    overrides: dict = field(default_factory=dict)  # ModelConfig fields (--set)
    scan: str = "auto"  # the scan to train with; 'keep': each variant's own; overrides['scan'] wins
    epochs: int | None = None
    steps: int | None = None
    minutes: float | None = None
    batch: int | None = None
    crop_seconds: float | None = None
    lr: float = 1e-3
    phase_loss: bool = False
    precision: str = "fp32"  # fp32, or bf16 under autocast
    metricgan: bool | None = None  # None: as the recipe says (on for 'reference')
    recipe: str = "default"
    val_every: int | None = None  # steps between validations (default 50; synth default budget: 100)
    checkpoint_every: int | None = None  # steps between resumable checkpoints (same defaults)
    out: Path = Path("runs")
    resume: bool = False
    overwrite: bool = False  # start a run folder that holds a run over again
    resume_if_present: bool = False  # a queued pair: continue a last.pt left by an earlier attempt, else start
    skip_finished: bool = False  # an ablation: a pair already FINISHED in the store (or run folder) is not redone
    parent_name: str | None = None  # an ablation: one parent run over the (variant, seed) runs
    parent_run_id: str | None = None  # a queued ablation: the children's parent run, made when it was queued
    dnsmos: bool = False  # score the test split with DNSMOS too (the [dnsmos] extra)
    compile: str | None = None  # torch.compile mode for training (bench.compiling); None: eager

    def resumes(self, variant: str, seed: int) -> bool:
        """Whether this (variant, seed) continues from its last.pt."""
        return self.resume or (self.resume_if_present and (run_folder(self, variant, seed) / "last.pt").is_file())

    def to_dict(self) -> dict:
        """JSON-able fields (a queued ablation keeps its request in the study)."""
        return {f.name: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for f in fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, data: dict) -> "RunRequest":
        return cls(**(data | {"variants": tuple(data["variants"]), "seeds": tuple(data["seeds"]),
                              "out": Path(data["out"])}))


@dataclass(frozen=True)
class RunContext:
    """Where the work runs: device, tracking store (None: not tracked), metric processes (0: one per core),
    and this process's rank in a torchrun world (rank 0 alone scores, logs and writes)."""

    device: str = "cpu"
    tracking_uri: str | None = None
    workers: int = 0
    ranks: Ranks = SINGLE


ON_THIS_CPU = RunContext()  # one process on the CPU, untracked


@dataclass(frozen=True)
class PlannedRun:
    """One (variant, seed) of a request, resolved once: config, train settings, folder, run key, and what it
    continues (the MLflow runs its checkpoint remembers) when it resumes."""

    variant: str
    config: ModelConfig
    settings: TrainSettings
    folder: Path
    key: str = ""  # what makes two runs the same run (config, settings, data); '' for a study's throwaway run
    recipe: str = "default"
    resumes: bool = False
    overwrite: bool = False  # its folder started over
    remembered: dict = field(default_factory=dict)  # run_mlflow_id, run_mlflow_parent of the checkpoint

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def label(self) -> str:
        return f"{self.variant} seed {self.seed}"


def train_settings(request: RunRequest, spec: str, seed: int, world: int = 1) -> TrainSettings:
    """Budget and recipe from the request: the reference recipe, the synth corpus's recipe (and its step budget
    when none is given), or the flags; a flag always wins over a default."""
    if request.recipe not in RECIPES:
        raise MbsbenchError(f"--recipe {request.recipe!r}: expected one of {', '.join(RECIPES)}")
    given = {k: getattr(request, k) for k in BUDGET if getattr(request, k) is not None}
    if request.recipe == "reference":
        defaults = RECIPE_DEFAULTS | ({} if given else REFERENCE_BUDGET)
    elif spec.startswith("synth"):  # one recipe on the corpus, whichever budget is asked for
        defaults = SYNTH_RECIPE | ({} if given else SYNTH_BUDGET)
    elif not given:
        raise MbsbenchError("give a training budget for this dataset: --epochs N, --steps N or --minutes M")
    else:
        defaults = RECIPE_DEFAULTS
    chosen = {k: getattr(request, k) for k in ("batch", "crop_seconds", "val_every", "checkpoint_every")
              if getattr(request, k) is not None}
    recipe = RECIPE_DEFAULTS | {k: v for k, v in defaults.items() if k not in BUDGET} | chosen
    budget = given or {k: v for k, v in defaults.items() if k in BUDGET}
    metricgan = request.metricgan if request.metricgan is not None else request.recipe == "reference"
    return TrainSettings(**recipe, lr=request.lr, seed=seed, phase_loss=request.phase_loss, **budget,
                         precision=request.precision, metricgan=metricgan, world_size=world, compile=request.compile)


def resolve_configs(request: RunRequest) -> dict[str, ModelConfig]:
    """Each variant's config with the overrides and the training scan."""
    overrides = dict(request.overrides)
    if request.scan != "keep":  # same math as each variant's own scan, only faster: the budget buys more steps
        overrides.setdefault("scan", request.scan)
    return {name: build_config(name, **overrides) for name in request.variants}


def run_folder(request: RunRequest, variant: str, seed: int) -> Path:
    return Path(request.out) / f"{variant}-seed{seed}"


def check_outputs(request: RunRequest) -> None:
    """No run folder silently overwritten, --resume only where there is a run to resume (checked first: a refused
    request creates no folder), and --out writable."""
    out = Path(request.out)
    for variant in request.variants:
        for seed in request.seeds:
            check_run_folder(request, variant, seed)
    check_writable(out)


def check_writable(out: Path) -> None:
    """--out created where missing and written to once, or a one-line error."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise MbsbenchError(f"--out {out}: not writable ({err.strerror or type(err).__name__})") from None


def check_run_folder(request: RunRequest, variant: str, seed: int) -> None:
    """A run folder is resumed, started over (--overwrite), or new: never silently overwritten."""
    folder = run_folder(request, variant, seed)
    holds = [name for name in ("last.pt", "best.pt") if (folder / name).exists()]
    if request.resume and "last.pt" not in holds:
        raise MbsbenchError(f"--resume: nothing to resume in {folder} (no last.pt)")
    finished_here = request.skip_finished and (folder / "result.json").is_file()  # decided against the store
    if holds and not request.resumes(variant, seed) and not request.overwrite and not finished_here:
        raise MbsbenchError(f"{folder} holds a run already ({', '.join(holds)}): --resume continues it, "
                            "--overwrite starts it over, or choose another --out")


def check_metricgan_crop(settings: TrainSettings, configs: dict[str, ModelConfig]) -> None:
    """The MetricGAN discriminator's convs need a crop of MIN_FRAMES STFT frames (it crashed at the first step)."""
    if not settings.metricgan:
        return
    from variants.discriminator import MIN_FRAMES  # torch, with a discriminator to train anyway

    for name, cfg in configs.items():
        frames = 1 + round(settings.crop_seconds * cfg.sample_rate) // cfg.hop
        if frames < MIN_FRAMES:
            shortest = (MIN_FRAMES - 1) * cfg.hop / cfg.sample_rate
            raise MbsbenchError(f"--crop-seconds {settings.crop_seconds}: {frames} STFT frames of {name}; the "
                                f"MetricGAN discriminator needs {MIN_FRAMES} (crops of {shortest:g} s or more)")


def check_request(request: RunRequest, spec_check) -> dict[str, ModelConfig]:
    """The checks that need neither torch nor the tracking store: names, fields, data, budget, outputs."""
    if request.resume and request.overwrite:
        raise MbsbenchError("--resume and --overwrite contradict each other: choose one")
    configs = resolve_configs(request)
    no_phase = [name for name, cfg in configs.items() if cfg.decoder != "dual_magphase"]
    if request.phase_loss and no_phase:
        raise MbsbenchError(f"--phase-loss: {', '.join(no_phase)} has no phase output (decoder "
                            f"{configs[no_phase[0]].decoder}); the phase term needs decoder=dual_magphase")
    spec_check(request.data)
    for seed in request.seeds:
        check_metricgan_crop(train_settings(request, request.data, seed), configs)
    check_outputs(request)
    return configs


def preflight(request: RunRequest, context: RunContext, spec_check) -> dict[str, ModelConfig]:
    """Every check of a request before its first step (its compile mode on this device, check_request, then the
    store); the configs to train."""
    check_compile(request.compile, context.device)  # before check_request makes the output folder
    configs = check_request(request, spec_check)
    if context.tracking_uri:
        client(context.tracking_uri)  # reachable and usable, its schema in place
    return configs
