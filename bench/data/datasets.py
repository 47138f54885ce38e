"""Datasets: the embedded synth corpus, VoiceBank+DEMAND folders, any paired folders, and folders of real noisy
recordings without a clean side (folder:DIR, scored by the non-intrusive metrics only).

A dataset is a set of splits (train, val, test) of clean/noisy pairs plus the problems found in
them. Bad files are reported once each and handled as documented in CHECKS, never a crash.
"""

import csv
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from bench.data.synth import SAMPLE_RATE, SynthSettings, ensure_corpus
from variants.config import ModelConfig
from variants.errors import MbsbenchError, first_line

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
MIN_SECONDS = 0.25  # PESQ refuses anything shorter
CLIP_LEVEL = 0.999
CLIP_FRACTION = 1e-3  # more than 0.1% of samples at full scale counts as clipped
VBD_LAYOUTS = (
    {
        "train": ("clean_trainset_28spk_wav", "noisy_trainset_28spk_wav"),
        "test": ("clean_testset_wav", "noisy_testset_wav"),
    },
    {"train": ("train/clean", "train/noisy"), "test": ("test/clean", "test/noisy")},
)
# what happens to a pair with each problem
CHECKS = {
    "unreadable": "skipped",
    "empty": "skipped",
    "non-finite samples": "skipped",
    "too short to score": "skipped",
    "missing counterpart": "skipped",
    "multichannel": "fixed: channels averaged to mono",
    "length mismatch": "fixed: both cut to the shorter",
    "clipped": "kept: reported only",
}


@dataclass(frozen=True)
class Pair:
    """One utterance: clean and noisy paths (clean None for a recording without one), speaker, SNR when known."""

    id: str
    clean: Path | None
    noisy: Path
    speaker: str
    snr_db: float | None = None
    noise: str = ""


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str
    action: str

    def line(self) -> str:
        return f"{self.path}: {self.reason} ({self.action})"


@dataclass
class Dataset:
    """Splits of pairs, the problems found, and a fingerprint of names and sizes."""

    spec: str
    splits: dict[str, list[Pair]]
    problems: list[Problem] = field(default_factory=list)

    def split(self, name: str) -> list[Pair]:
        if name not in self.splits:
            why = "" if self.has_clean else " (noisy recordings only: they can be scored, not trained on)"
            raise MbsbenchError(f"dataset {self.spec!r} has no split {name!r}; it has {', '.join(self.splits)}{why}")
        return self.splits[name]

    @property
    def has_clean(self) -> bool:
        """Whether its utterances have a clean side (the intrusive metrics need one)."""
        return any(pair.clean is not None for pairs in self.splits.values() for pair in pairs)

    @property
    def fingerprint(self) -> str:
        """sha256 (16 hex) over split, names and byte sizes of every file."""
        digest = hashlib.sha256()
        for split, pairs in sorted(self.splits.items()):
            for pair in pairs:
                for path in (p for p in (pair.clean, pair.noisy) if p is not None):
                    digest.update(f"{split}/{path.parent.name}/{path.name}:{path.stat().st_size}\n".encode())
        return digest.hexdigest()[:16]


def read_audio(path: Path) -> tuple[np.ndarray, list[str]]:
    """Mono float32 at 16 kHz and the notes of what was fixed; MbsbenchError when unusable."""
    try:
        wav, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise MbsbenchError(f"{path}: unreadable ({first_line(err, 120)})") from None
    notes = []
    if wav.shape[0] == 0:
        raise MbsbenchError(f"{path}: empty")
    if wav.shape[1] > 1:
        notes.append("multichannel")
    wav = wav.mean(axis=1)
    if not np.isfinite(wav).all():
        raise MbsbenchError(f"{path}: non-finite samples")
    if rate != SAMPLE_RATE:
        wav = soxr.resample(wav, rate, SAMPLE_RATE).astype(np.float32)
    if np.mean(np.abs(wav) >= CLIP_LEVEL) > CLIP_FRACTION:
        notes.append("clipped")
    if len(wav) < MIN_SECONDS * SAMPLE_RATE:
        raise MbsbenchError(f"{path}: too short to score ({len(wav) / SAMPLE_RATE:.3f} s < {MIN_SECONDS} s)")
    return wav, notes


def load_pair(pair: Pair) -> tuple[np.ndarray | None, np.ndarray]:
    """Clean and noisy of one pair, mono 16 kHz float32, cut to the same length (clean None without one)."""
    noisy, _ = read_audio(pair.noisy)
    if pair.clean is None:
        return None, noisy
    clean, _ = read_audio(pair.clean)
    n = min(len(clean), len(noisy))
    return clean[:n], noisy[:n]


def rms_gain(noisy: np.ndarray) -> float:
    """The reference's input normalisation: c = sqrt(len / sum(noisy^2)); both signals are scaled by c."""
    energy = float((noisy**2).sum())
    return math.sqrt(len(noisy) / energy) if energy > 0 else 1.0


def input_gain(noisy: np.ndarray, cfg: ModelConfig) -> float:
    """The gain a model's input (and target) is scaled by: rms_gain, or 1 for input_scaling='none'."""
    return rms_gain(noisy) if cfg.input_scaling == "utterance" else 1.0


def check_pair(pair: Pair) -> list[Problem]:
    """Every problem of one pair, each with the action taken."""
    problems, lengths = [], []
    for path in (p for p in (pair.clean, pair.noisy) if p is not None):
        try:
            wav, notes = read_audio(path)
        except MbsbenchError as err:
            reason = str(err).split(": ", 1)[1]
            key = next(k for k in CHECKS if reason.startswith(k))
            problems.append(Problem(str(path), reason, CHECKS[key]))
            continue
        lengths.append(len(wav))
        problems += [Problem(str(path), note, CHECKS[note]) for note in notes]
    if len(lengths) == 2 and lengths[0] != lengths[1]:
        problems.append(Problem(str(pair.noisy), f"length mismatch ({lengths[0]} vs {lengths[1]} samples)",
                                CHECKS["length mismatch"]))
    return problems


def is_skipped(problems: list[Problem]) -> bool:
    return any(p.action == "skipped" for p in problems)


def pair_folders(clean_dir: Path, noisy_dir: Path, speaker_of=lambda stem: stem) -> tuple[list[Pair], list[Problem]]:
    """Pairs of same-named files; a name on one side only is a problem."""
    for folder in (clean_dir, noisy_dir):
        if not folder.is_dir():
            raise MbsbenchError(f"{folder}: no such folder")
    clean = {p.stem: p for p in sorted(clean_dir.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES}
    noisy = {p.stem: p for p in sorted(noisy_dir.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES}
    if not clean and not noisy:
        raise MbsbenchError(f"{clean_dir} and {noisy_dir}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    problems = [Problem(str(p), "missing counterpart", CHECKS["missing counterpart"])
                for side, other in ((clean, noisy), (noisy, clean)) for name, p in side.items() if name not in other]
    pairs = [Pair(name, clean[name], noisy[name], speaker_of(name)) for name in clean if name in noisy]
    return pairs, problems


def split_by_speaker(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, val): whole speakers drawn (seeded) into val until it holds about `fraction` of pairs."""
    speakers = sorted({p.speaker for p in pairs})
    order = np.random.default_rng(seed).permutation(len(speakers))
    val_speakers: set[str] = set()
    target = max(1, round(fraction * len(pairs)))
    for index in order:
        if sum(p.speaker in val_speakers for p in pairs) >= target or len(val_speakers) >= len(speakers) - 1:
            break
        val_speakers.add(speakers[index])
    return [p for p in pairs if p.speaker not in val_speakers], [p for p in pairs if p.speaker in val_speakers]


def _vbd_speaker(stem: str) -> str:
    match = re.match(r"([A-Za-z]+\d+)_", stem)
    return match.group(1) if match else stem


def open_vbd(root: Path, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """VoiceBank+DEMAND: the official folder names, or train/{clean,noisy} and test/{clean,noisy}."""
    for layout in VBD_LAYOUTS:
        if all((root / d).is_dir() for dirs in layout.values() for d in dirs):
            break
    else:
        names = ", ".join(layout["train"][0] for layout in VBD_LAYOUTS)
        raise MbsbenchError(f"{root}: not a VoiceBank+DEMAND folder (expected {names} and their siblings)")
    splits, problems = {}, []
    for split, (clean_dir, noisy_dir) in layout.items():
        pairs, found = pair_folders(root / clean_dir, root / noisy_dir, _vbd_speaker)
        splits[split], problems = pairs, problems + found
    splits["train"], splits["val"] = split_by_speaker(splits["train"], val_fraction, seed)
    return Dataset(f"vbd:{root}", splits, problems)


def open_synth(settings: SynthSettings | None = None, cache: Path | None = None) -> Dataset:
    """The embedded corpus (generated on first use)."""
    settings = settings or SynthSettings()
    folder = ensure_corpus(settings, cache)
    with open(folder / "meta.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    splits: dict[str, list[Pair]] = {"train": [], "val": [], "test": []}
    for row in rows:
        base = folder / row["split"]
        splits[row["split"]].append(Pair(row["id"], base / "clean" / f"{row['id']}.wav",
                                         base / "noisy" / f"{row['id']}.wav", row["speaker"],
                                         float(row["snr_db"]), row["noise"]))
    return Dataset(f"synth:{settings.key()}", splits)


def synth_settings(text: str) -> SynthSettings:
    """'' (defaults), 'SEED', or 'seed=1,train=40,val=8,test=16' -> SynthSettings."""
    if not text:
        return SynthSettings()
    if text.isdigit():
        return SynthSettings(seed=int(text))
    fields = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key not in ("seed", "train", "val", "test") or not value.isdigit():
            raise MbsbenchError(f"synth:{text}: expected SEED or seed=N,train=N,val=N,test=N")
        fields[key] = int(value)
    return SynthSettings(**fields)


def spec_form(spec: str) -> tuple[str, str]:
    """(kind, rest) of a well-formed data spec, nothing opened (the folders may be on another machine)."""
    kind, _, rest = spec.partition(":")
    if kind == "synth":
        synth_settings(rest)
        return kind, rest
    if (kind in ("vbd", "folder") and rest) or (kind == "paired" and rest.count(",") == 1):
        return kind, rest
    expected = ("synth, synth:SEED, synth:seed=N,train=N,val=N,test=N, vbd:PATH, paired:CLEAN_DIR,NOISY_DIR or "
                "folder:DIR")
    raise MbsbenchError(f"unknown data spec {spec!r}; expected {expected}")


def open_dataset(spec: str, cache: Path | None = None, seed: int = 0) -> Dataset:
    """synth | vbd:PATH | paired:CLEAN_DIR,NOISY_DIR | folder:DIR (paired and folder: all in the 'test' split)."""
    kind, rest = spec_form(spec)
    if kind == "synth":
        return open_synth(synth_settings(rest), cache)
    if kind == "vbd":
        return open_vbd(Path(rest).expanduser(), seed=seed)
    if kind == "folder":
        return open_recordings(Path(rest).expanduser(), spec)
    clean_dir, noisy_dir = (Path(p).expanduser() for p in rest.split(","))
    pairs, problems = pair_folders(clean_dir, noisy_dir)
    return Dataset(spec, {"test": pairs}, problems)


def open_recordings(folder: Path, spec: str) -> Dataset:
    """Noisy recordings only (no clean side): every audio file of the folder, its 'test' split."""
    if not folder.is_dir():
        raise MbsbenchError(f"{spec}: {folder} is not a folder")
    files = [p for p in sorted(folder.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES]
    if not files:
        raise MbsbenchError(f"{spec}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in {folder}")
    return Dataset(spec, {"test": [Pair(p.stem, None, p, "") for p in files]})


def check_spec(spec: str) -> None:
    """A data spec checked without generating anything: the synth settings parsed, folders listed."""
    if spec_form(spec)[0] != "synth":
        open_dataset(spec)


def check_dataset(dataset: Dataset, splits: list[str] | None = None) -> list[Problem]:
    """Every problem in the dataset (pairing problems first), each file reported once."""
    problems = list(dataset.problems)
    for name in splits or list(dataset.splits):
        for pair in dataset.split(name):
            problems += check_pair(pair)
    seen, unique = set(), []
    for problem in problems:
        if (problem.path, problem.reason) not in seen:
            seen.add((problem.path, problem.reason))
            unique.append(problem)
    return unique
