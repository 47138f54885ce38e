"""Measured causality (issue 27): which variants can stream, their latency, and the module that reads ahead."""

import json

import pytest

from bench.__main__ import main as bench
from bench.training.checkpoint import check_same_model
from variants.errors import MbsbenchError
from variants.registry import all_names, build_config

# the scan does not change what a model reads: the chunked one steps through the original-sized probes faster
TINY = ["--set", "feature_dim=16", "--set", "temporal_layers=1", "--set", "band_layers=1", "--set", "scan=chunked"]


def test_every_registered_variant_is_probed(capsys: pytest.CaptureFixture) -> None:
    """The offline variants read the future and name the module; the causal composition streams with one
    window of latency (n_fft - 1 samples: 383 of window overlap and the 128-sample hop)."""
    assert bench(["latency", "--variant", "*", *TINY, "--seeds", "1", "--format", "json"]) == 0
    rows = {row["variant"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(all_names())
    assert rows.pop("optimized_causal") == {"variant": "optimized_causal", "streams": "yes", "latency_ms": 31.94,
                                            "latency_samples": 511, "reads_ahead": "-"}
    assert all(row["streams"] == "no (not causal)" and row["latency_ms"] is None for row in rows.values())
    assert rows["optimized"]["reads_ahead"] == "band_split.run_norms.* (RunNorm)"  # over the utterance


@pytest.mark.parametrize(("name", "streams", "reads_ahead"), [
    ("optimized+causal_norm", True, ["decoder (MaskDecoder3Tap)"]),  # one frame ahead: bounded, a hop more
    ("original+causal_norm", False, ["encoders.*.time_blocks.* (BiMambaBlock)"]),  # the backward scan
    ("original+unidirectional+causal_norm+causal_mask", True, []),
])
def test_each_single_change_toward_streaming_is_measured(name: str, streams: bool, reads_ahead: list) -> None:
    from bench.profiling.causality import probe
    from variants.registry import build_model

    cfg = build_config(name, feature_dim=16, temporal_layers=1)
    found = probe(build_model(cfg), cfg, seeds=(0,))
    assert (found.causal, found.reads_ahead) == (streams, reads_ahead)
    if streams:
        assert found.latency_samples == cfg.n_fft - 1 + (cfg.hop if reads_ahead else 0)


def test_a_causal_checkpoint_never_loads_into_the_offline_model() -> None:
    """The new fields stay out of a default config's dict (earlier run keys and checkpoints still match), and a
    checkpoint trained causal is refused by the offline config, and the other way round."""
    offline, causal = build_config("optimized"), build_config("optimized_causal")
    assert "band_norm" not in offline.to_dict() and causal.to_dict()["band_norm"] == "frame"
    saved = {"config": causal.to_dict(), "variant": "optimized_causal"}
    with pytest.raises(MbsbenchError, match="band_norm='frame' \\(here 'time'\\)"):
        check_same_model(saved, "last.pt", offline, "optimized")
    with pytest.raises(MbsbenchError, match="band_norm='time' \\(here 'frame'\\)"):
        check_same_model({"config": offline.to_dict(), "variant": "optimized"}, "last.pt", causal, "optimized_causal")
    check_same_model({"config": offline.to_dict()}, "last.pt", offline, "optimized")  # the same: no error


def test_causal_scaling_trains_and_runs_on_the_signal_as_recorded(tmp_path) -> None:
    """The reference's input gain reads the whole utterance; causal_scaling leaves the input as recorded in the
    crops, validation and evaluation alike; optimized_causal trains through the normal run path."""
    import numpy as np

    from bench.data.datasets import input_gain
    from bench.training.experiment import RunContext, RunRequest, run_experiment

    noisy = np.full(1600, 0.01)
    assert input_gain(noisy, build_config("optimized")) == pytest.approx(100.0)
    assert input_gain(noisy, build_config("optimized_causal")) == 1.0
    request = RunRequest(("optimized_causal",), data="synth:seed=5,train=8,val=4,test=4", steps=2, batch=2,
                         out=tmp_path / "runs", overrides={"feature_dim": 16})
    outcome = run_experiment(request, RunContext("cpu", None, workers=1))
    assert outcome.runs[0].train.status == "ok" and outcome.runs[0].figures["pesq_wb_n"] == 4
