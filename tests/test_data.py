"""Datasets: the synth corpus, folder layouts, speaker splits, and the bad-file battery."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench.data.datasets import check_dataset, load_pair, open_dataset, open_synth, open_vbd, split_by_speaker
from bench.data.synth import SynthSettings
from variants.errors import MbsbenchError

RATE = 16000
TINY = SynthSettings(seed=3, train=8, val=4, test=8)


def tone(seconds: float = 1.0, rate: int = RATE, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t)) / 2).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory):
    return open_synth(TINY, tmp_path_factory.mktemp("cache"))


def test_synth_splits_differ_in_speakers_and_sentences(tiny_corpus) -> None:
    import csv

    with open(tiny_corpus.split("train")[0].clean.parent.parent.parent / "meta.csv") as handle:
        meta = list(csv.DictReader(handle))
    by_split = {s: [r for r in meta if r["split"] == s] for s in ("train", "val", "test")}
    assert [len(by_split[s]) for s in by_split] == [8, 4, 8]
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not {r["speaker"] for r in by_split[a]} & {r["speaker"] for r in by_split[b]}
        assert not {r["text"] for r in by_split[a]} & {r["text"] for r in by_split[b]}
    assert {float(r["snr_db"]) for r in by_split["train"]} <= {0.0, 5.0, 10.0, 15.0}
    assert {float(r["snr_db"]) for r in by_split["test"]} == {2.5, 7.5, 12.5, 17.5}


def test_synth_mixtures_hit_their_snr(tiny_corpus) -> None:
    for pair in tiny_corpus.split("test"):
        clean, noisy = load_pair(pair)
        noise = noisy - clean
        snr = 10 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum(noise.astype(np.float64) ** 2))
        assert snr == pytest.approx(pair.snr_db, abs=0.3)  # 16-bit storage costs a little
        assert np.abs(noisy).max() < 1.0


def test_synth_is_deterministic_and_cached(tmp_path: Path, tiny_corpus) -> None:
    again = open_synth(TINY, tmp_path)
    assert again.fingerprint == tiny_corpus.fingerprint
    first = again.split("test")[0]
    assert np.array_equal(load_pair(first)[1], load_pair(tiny_corpus.split("test")[0])[1])
    mtime = first.noisy.stat().st_mtime_ns
    assert open_synth(TINY, tmp_path).split("test")[0].noisy.stat().st_mtime_ns == mtime  # reused


def write(path: Path, wav: np.ndarray, rate: int = RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav, rate)


def battery(root: Path) -> tuple[Path, Path]:
    """One good pair and one pair per kind of bad file."""
    clean, noisy = root / "clean", root / "noisy"
    good = tone()
    write(clean / "good.wav", good)
    write(noisy / "good.wav", good + 0.01)
    write(clean / "stereo.wav", good)
    write(noisy / "stereo.wav", np.stack([good, good], axis=1))
    write(clean / "short.wav", tone(0.1))
    write(noisy / "short.wav", tone(0.1))
    nan = good.copy()
    nan[100] = np.nan
    write(clean / "nan.wav", good)
    sf.write(noisy / "nan.wav", nan, RATE, subtype="FLOAT")
    write(clean / "clipped.wav", good)
    write(noisy / "clipped.wav", np.clip(good * 10, -1, 1))
    write(clean / "mismatch.wav", good)
    write(noisy / "mismatch.wav", tone(0.9))
    write(clean / "empty.wav", np.zeros(0, np.float32))
    write(noisy / "empty.wav", good)
    (clean / "broken.wav").write_bytes(b"RIFF not really a wav")
    write(noisy / "broken.wav", good)
    write(clean / "lonely.wav", good)
    return clean, noisy


EXPECTED = {
    "stereo.wav": ("multichannel", "fixed"),
    "short.wav": ("too short to score", "skipped"),
    "nan.wav": ("non-finite samples", "skipped"),
    "clipped.wav": ("clipped", "kept"),
    "mismatch.wav": ("length mismatch", "fixed"),
    "empty.wav": ("empty", "skipped"),
    "broken.wav": ("unreadable", "skipped"),
    "lonely.wav": ("missing counterpart", "skipped"),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_bad_file_battery(tmp_path: Path, name: str) -> None:
    clean, noisy = battery(tmp_path)
    problems = check_dataset(open_dataset(f"paired:{clean},{noisy}"))
    mine = [p for p in problems if Path(p.path).name == name]
    reason, action = EXPECTED[name]
    assert mine and mine[0].reason.startswith(reason) and mine[0].action.startswith(action)
    assert not [p for p in problems if Path(p.path).name == "good.wav"]
    assert len({(p.path, p.reason) for p in problems}) == len(problems)  # each reported once


def test_fixed_pairs_load(tmp_path: Path) -> None:
    clean, noisy = battery(tmp_path)
    pairs = {p.id: p for p in open_dataset(f"paired:{clean},{noisy}").split("test")}
    c, n = load_pair(pairs["mismatch"])
    assert len(c) == len(n) == int(0.9 * RATE)
    assert load_pair(pairs["stereo"])[1].ndim == 1


def test_vbd_layout_resamples_and_splits_by_speaker(tmp_path: Path) -> None:
    for split, folders in (("train", ("clean_trainset_28spk_wav", "noisy_trainset_28spk_wav")),
                           ("test", ("clean_testset_wav", "noisy_testset_wav"))):
        speakers = ["p226", "p227", "p228", "p229", "p230"] if split == "train" else ["p232", "p257"]
        for spk in speakers:
            for k in range(3):
                for folder in folders:
                    write(tmp_path / folder / f"{spk}_{k:03d}.wav", tone(1.0, 48000), 48000)
    data = open_vbd(tmp_path, val_fraction=0.2, seed=1)
    train, val, test = ({p.speaker for p in data.split(s)} for s in ("train", "val", "test"))
    assert val and not train & val and not val & test and not train & test
    assert len(data.split("train")) + len(data.split("val")) == 15
    assert len(load_pair(data.split("test")[0])[0]) == RATE  # 48 kHz resampled to 16 kHz


def test_split_by_speaker_is_seeded() -> None:
    from bench.data.datasets import Pair

    pairs = [Pair(f"{s}_{i}", Path("c"), Path("n"), s) for s in "abcdefghij" for i in range(4)]
    assert split_by_speaker(pairs, 0.2, 0) == split_by_speaker(pairs, 0.2, 0)
    _, val = split_by_speaker(pairs, 0.2, 0)
    assert len(val) == 8 and len({p.speaker for p in val}) == 2


@pytest.mark.parametrize(
    "spec,fragment",
    [("vbd", "unknown data spec"), ("folder:/x", "/x is not a folder"), ("folders:/x", "unknown data spec"),
     ("paired:/nonexistent/a,/nonexistent/b",
     "no such folder"), ("vbd:/nonexistent", r"not a VoiceBank\+DEMAND folder")],
)
def test_bad_specs(spec: str, fragment: str) -> None:
    with pytest.raises(MbsbenchError, match=fragment):
        open_dataset(spec)


def test_empty_folders(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "n").mkdir()
    with pytest.raises(MbsbenchError, match="no audio files"):
        open_dataset(f"paired:{tmp_path / 'c'},{tmp_path / 'n'}")
