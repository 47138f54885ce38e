"""The streaming engine (issue 27): one hop or any chunk at a time, equal to the offline causal model."""

import json

import pytest
import torch

from variants.errors import MbsbenchError
from variants.registry import build_config, build_model
from variants.streaming import StreamingEnhancer, enhance_streaming


@pytest.mark.parametrize("name", ["optimized_causal", "original+unidirectional+causal_norm"])
def test_streaming_equals_the_offline_model_at_any_chunking(name: str) -> None:
    """Hop-aligned, random-length and one-sample chunks, a length no hop divides, a batch of two: the state
    carried (conv inputs, scan state, the mask's past frames, the overlap-add) and the end reflected on flush."""
    torch.manual_seed(0)
    cfg = build_config(name, **({} if name == "optimized_causal" else {"feature_dim": 32, "temporal_layers": 2}))
    model = build_model(cfg).eval()
    wav = torch.randn(2, 5000 + 77) * 0.1
    with torch.no_grad():
        offline = model(wav)
    sizes = torch.randint(1, 900, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    for chunks in ([cfg.hop] * 60, sizes, [1] * 600):
        streamed = enhance_streaming(model, wav, chunks)
        assert streamed.shape == offline.shape
        assert float((streamed - offline).abs().max()) <= 1e-5 * float(offline.abs().max()), chunks[:3]


def test_each_push_returns_what_no_coming_frame_changes() -> None:
    """Output lags the input by the window: a hop in, a hop out once the first window is full."""
    cfg = build_config("optimized_causal", feature_dim=16)
    engine = StreamingEnhancer(build_model(cfg))
    lengths = [engine.push(torch.zeros(1, cfg.hop)).shape[1] for _ in range(8)]
    assert lengths == [0, 0, 0, 128, 128, 128, 128, 128]
    assert engine.flush().shape[1] == 8 * cfg.hop - sum(lengths)


@pytest.mark.parametrize(("name", "fragment"), [
    ("optimized", "band_norm=time normalises over the utterance (add causal_norm)"),
    ("optimized+causal_norm", "mask_taps=centered reads a frame ahead (add causal_mask)"),
    ("original+causal_norm", "bidirectional_time=True runs a backward scan (add unidirectional)"),
])
def test_a_model_that_reads_ahead_is_refused_naming_why(name: str, fragment: str) -> None:
    with pytest.raises(MbsbenchError, match=f"cannot stream this model: {fragment}".replace("(", "\\(")
                       .replace(")", "\\)")):
        StreamingEnhancer(build_model(build_config(name, feature_dim=16)))


def test_bench_stream_logs_its_figures_and_the_deployment_table_shows_them(tmp_path, capsys) -> None:
    from bench.__main__ import main as bench
    from reports.collect import load_store
    from reports.tables import deployment_table

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["stream", "--variant", "optimized_causal", "--set", "feature_dim=16", "--seconds", "1.2"]
    assert bench([*argv, "--tracking-uri", uri, "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["latency_ms"] == 31.9375 and row["hop_ms"] == 8.0 and row["threads"] == 1
    assert 0 < row["hop_compute_median_ms"] <= row["hop_compute_p99_ms"] <= row["hop_compute_max_ms"]
    assert row["pushes_timed"] == 150 - 20 and row["state_kib"] > 0 and row["dns_rule"] in ("pass", "fail")
    assert row["rtf"] == pytest.approx(row["hop_compute_median_ms"] / 8.0, rel=1.0)
    table = deployment_table(load_store(uri))
    assert table.rows[0][:2] == ["optimized_causal", "31.94"] and table.rows[0][-3] == row["dns_rule"]
    assert table.command == ("python -m bench stream --variant optimized_causal --set feature_dim=16 --seconds 1.2 "
                             "--format json "
                             "&& python -m reports tables")


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--variant", "optimized"], "cannot stream this model: band_norm=time normalises over the utterance"),
    (["--variant", "optimized_causal", "--seconds", "0.5"], "--seconds 0.5: expected a number > 1.0 s"),
    (["--variant", "optimized_causal", "--chunk", "100"], "--chunk 100: expected a multiple of the hop (128 samples)"),
    (["--variant", "optimized_causal", "--chunk", "0"], "--chunk 0: expected an integer >= 1"),
])
def test_bench_stream_bad_input_is_one_line(argv: list[str], fragment: str, capsys) -> None:
    from bench.__main__ import main as bench

    try:
        code = bench(["stream", *argv, "--no-track"])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0], err


def test_the_exported_onnx_step_streams_what_torch_streams(tmp_path) -> None:
    """bench export writes the step (state in, state out); onnxruntime steps it to the offline model's output
    (1e-4), every state carried from frame to frame through the ONNX graph."""
    pytest.importorskip("onnxruntime")
    from bench.__main__ import main as bench
    from bench.export import OnnxStep
    from variants.streaming import FrameStep

    path = tmp_path / "step.onnx"
    assert bench(["export", "--variant", "optimized_causal", "--set", "feature_dim=16", "--onnx", str(path)]) == 0
    torch.manual_seed(0)  # the export's untrained weights (its --seed)
    model = build_model(build_config("optimized_causal", feature_dim=16)).eval()
    wav = torch.randn(1, 3000) * 0.1
    with torch.no_grad():
        offline = model(wav)
    engine = StreamingEnhancer(model, runner=OnnxStep(path, FrameStep(model)))
    streamed = torch.cat([engine.push(wav[:, :1234]), engine.push(wav[:, 1234:]), engine.flush()], dim=1)
    assert float((streamed - offline).abs().max()) <= 1e-4 * float(offline.abs().max())
