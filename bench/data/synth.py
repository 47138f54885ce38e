"""The embedded corpus: eSpeak NG speech mixed with generated noises at the VoiceBank+DEMAND SNRs.

Deterministic from a seed; train, validation and test differ in speakers (voice, variant, rate,
pitch), sentences and noise draws. Written once into a cache folder and reused.
"""

import csv
import fcntl
import hashlib
import json
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from bench.cache import default_cache
from bench.data.espeak import Espeak
from bench.interrupts import ignore_interrupts
from variants.errors import MbsbenchError

SAMPLE_RATE = 16000
TRAIN_SNRS = (0.0, 5.0, 10.0, 15.0)
TEST_SNRS = (2.5, 7.5, 12.5, 17.5)
NOISES = ("white", "pink", "brown", "babble", "hum", "modulated", "pink_hum")
VOICES = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
SPLIT_SPEAKERS = {"train": 14, "val": 3, "test": 4}

SUBJECTS = ("the old man", "a small child", "my brother", "the farmer", "her teacher", "the tall woman",
            "our neighbour", "the young doctor", "a quiet student", "the captain", "his sister", "the baker",
            "a tired driver", "the new manager", "the singer", "my friend")
VERBS = ("carried", "painted", "found", "opened", "cleaned", "sold", "watched", "followed", "fixed", "bought",
         "lost", "moved", "counted", "closed", "checked", "packed")
OBJECTS = ("the heavy box", "a red kite", "the wooden door", "seven apples", "the broken clock", "a long letter",
           "the blue boat", "some fresh bread", "the old map", "a silver ring", "the green chair", "two paper bags",
           "the small window", "a warm coat", "the garden gate", "three yellow pens")
PLACES = ("near the river", "before dinner", "in the morning", "after the storm", "at the station",
          "behind the house", "during the game", "on the hill", "by the market", "under the bridge",
          "in the kitchen", "at noon", "on a cold day", "across the street", "in the village", "at the school")


@dataclass(frozen=True)
class SynthSettings:
    """Corpus size and seed; everything else is derived deterministically from them."""

    seed: int = 0
    train: int = 240  # utterances
    val: int = 32
    test: int = 48

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            if getattr(self, name) < 1:
                raise MbsbenchError(f"synth:{name}={getattr(self, name)}: expected an integer >= 1")

    def key(self) -> str:
        text = json.dumps(asdict(self) | {"version": 2}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Speaker:
    name: str
    voice: str
    rate: int  # words per minute
    pitch: int  # 0..99


def make_speakers(rng: np.random.Generator) -> dict[str, list[Speaker]]:
    """Disjoint speakers per split: each a voice+variant with its own rate and pitch."""
    combos = [(v, w) for v in VOICES for w in VARIANTS]
    order = rng.permutation(len(combos))
    speakers, cursor = {}, 0
    for split, count in SPLIT_SPEAKERS.items():
        chosen = [combos[i] for i in order[cursor : cursor + count]]
        cursor += count
        speakers[split] = [
            Speaker(f"{split}_{k:02d}", f"{voice}+{variant}", int(rng.integers(135, 200)), int(rng.integers(25, 75)))
            for k, (voice, variant) in enumerate(chosen)
        ]
    return speakers


def make_sentences(rng: np.random.Generator, counts: dict[str, int]) -> dict[str, list[str]]:
    """Distinct sentences per split, no sentence shared between splits."""
    pool: set[str] = set()
    needed = sum(counts.values())
    while len(pool) < needed:
        parts = [p[rng.integers(len(p))] for p in (SUBJECTS, VERBS, OBJECTS, PLACES)]
        pool.add(" ".join(parts))
    ordered = sorted(pool)
    rng.shuffle(ordered)
    out, cursor = {}, 0
    for split, count in counts.items():
        out[split] = ordered[cursor : cursor + count]
        cursor += count
    return out


def colored_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum *= 1 / np.maximum(freqs, 20.0) ** (exponent / 2)
    x = np.fft.irfft(spectrum, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def hum(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mains hum: 50 or 60 Hz with decaying harmonics and a little noise."""
    t = np.arange(n) / SAMPLE_RATE
    base = rng.choice([50.0, 60.0])
    x = sum(np.sin(2 * np.pi * base * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 8))
    x = x + 0.05 * rng.standard_normal(n)
    return x / np.sqrt(np.mean(x**2))


def noise_signal(kind: str, rng: np.random.Generator, n: int, babble_pool: list[np.ndarray]) -> np.ndarray:
    """One noise of the given kind, n samples, unit RMS."""
    if kind == "babble":
        picks = rng.choice(len(babble_pool), size=min(5, len(babble_pool)), replace=False)
        x = np.zeros(n)
        for i in picks:
            x += np.resize(np.roll(babble_pool[i], int(rng.integers(len(babble_pool[i])))), n)
    elif kind == "modulated":
        t = np.arange(n) / SAMPLE_RATE
        x = colored_noise(rng, n, 1.0) * (1 + 0.9 * np.sin(2 * np.pi * rng.uniform(0.5, 4.0) * t))
    elif kind == "hum":
        x = hum(rng, n)
    elif kind == "pink_hum":
        x = colored_noise(rng, n, 1.0) + 0.5 * hum(rng, n)
    else:
        x = colored_noise(rng, n, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind])
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def mix(clean: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noise scaled to snr_db over the utterance; both signals then share a random level, no clipping."""
    noise = noise * np.sqrt(np.mean(clean**2) / 10 ** (snr_db / 10))
    noisy = clean + noise
    gain = 10 ** (rng.uniform(-30, -18) / 20) / np.sqrt(np.mean(clean**2))
    gain = min(gain, 0.95 / np.max(np.abs(noisy)))
    return (clean * gain).astype(np.float32), (noisy * gain).astype(np.float32)


def speak(engine: Espeak, speaker: Speaker, text: str) -> np.ndarray:
    """One utterance at 16 kHz, float64 in [-1, 1], with 0.15 s of leading and trailing silence trimmed to."""
    raw = engine.synthesize(text, speaker.voice, speaker.rate, speaker.pitch).astype(np.float64) / 32768
    wav = soxr.resample(raw, engine.sample_rate, SAMPLE_RATE)
    active = np.flatnonzero(np.abs(wav) > 1e-3)
    pad = int(0.15 * SAMPLE_RATE)
    return wav[max(active[0] - pad, 0) : active[-1] + pad] if active.size else wav


def speak_all(jobs: list[tuple[Speaker, str]], seed: int) -> list[np.ndarray]:
    """Every (speaker, text) job in order, in this process, from a seeded engine."""
    engine = Espeak.get()
    engine.seed(seed)
    return [speak(engine, speaker, text) for speaker, text in jobs]


def speak_fresh(jobs: list[tuple[Speaker, str]], seed: int) -> list[np.ndarray]:
    """speak_all in a new process: eSpeak NG keeps state between utterances that no call resets, so
    only the same sequence of calls from a fresh library gives the same audio."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=ignore_interrupts) as pool:
        return pool.submit(speak_all, jobs, seed).result()


def generate(settings: SynthSettings, folder: Path) -> None:
    """Write {split}/{clean,noisy}/*.wav and meta.csv for every split into folder."""
    rng = np.random.default_rng(settings.seed)
    counts = {"train": settings.train, "val": settings.val, "test": settings.test}
    speakers, sentences = make_speakers(rng), make_sentences(rng, counts)
    jobs = [(speakers[split][i % len(speakers[split])], sentences[split][i])
            for split, count in counts.items() for i in range(count)]
    voices = iter(speak_fresh(jobs, settings.seed))
    rows = []
    for split, count in counts.items():
        snrs = TRAIN_SNRS if split != "test" else TEST_SNRS
        offset = int(rng.integers(len(NOISES)))
        speech = [next(voices) for _ in range(count)]
        for sub in ("clean", "noisy"):
            (folder / split / sub).mkdir(parents=True, exist_ok=True)
        for i, clean in enumerate(speech):
            speaker = speakers[split][i % len(speakers[split])]
            others = [s for j, s in enumerate(speech) if j % len(speakers[split]) != i % len(speakers[split])]
            # every SNR meets every noise kind in turn, so per-SNR means compare like with like
            kind, snr = NOISES[(i // len(snrs) + offset) % len(NOISES)], snrs[i % len(snrs)]
            clean32, noisy32 = mix(clean, noise_signal(kind, rng, len(clean), others), snr, rng)
            name = f"{speaker.name}_{i:04d}"
            sf.write(folder / split / "clean" / f"{name}.wav", clean32, SAMPLE_RATE, subtype="PCM_16")
            sf.write(folder / split / "noisy" / f"{name}.wav", noisy32, SAMPLE_RATE, subtype="PCM_16")
            rows.append({"id": name, "split": split, "speaker": speaker.name, "voice": speaker.voice,
                         "rate": speaker.rate, "pitch": speaker.pitch, "snr_db": snr, "noise": kind,
                         "text": sentences[split][i]})
    with open(folder / "meta.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def ensure_corpus(settings: SynthSettings | None = None, cache: Path | None = None) -> Path:
    """Folder of the corpus for these settings, generated on first use (atomically, under a lock)."""
    settings = settings or SynthSettings()
    root = (cache or default_cache()) / "synth"
    folder = root / settings.key()
    if (folder / "meta.csv").exists():
        return folder
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f"{settings.key()}.lock", "w")  # noqa: SIM115 - held below, closed by the with
    except OSError as err:
        raise MbsbenchError(f"cache folder {root}: cannot write the corpus there ({err.strerror}); set "
                            "MBSBENCH_CACHE to a writable folder") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "meta.csv").exists():
            partial = root / f"{settings.key()}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            generate(settings, partial)
            (partial / "settings.json").write_text(json.dumps(asdict(settings)))
            partial.rename(folder)
    return folder
