"""The streaming step as an ONNX file (torch's exporter), and an onnxruntime session that steps like FrameStep."""

import contextlib
import importlib.util
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

try:  # the [onnx] extra: without it, only --runtime onnxruntime is refused
    import onnxruntime
except ImportError:
    onnxruntime = None

from variants.errors import MbsbenchError
from variants.streaming import FrameStep


def state_names(step: FrameStep) -> tuple[list[str], list[str]]:
    """Input and output names: the frame's samples and each state tensor, in FrameStep's order."""
    count = len(step.initial_state(1))
    return (["frame_in", *(f"state_in_{i}" for i in range(count))],
            ["frame_out", *(f"state_out_{i}" for i in range(count))])


def export_onnx(step: FrameStep, path: Path) -> Path:
    """FrameStep at batch 1 to `path` (state in, state out): an ONNX graph onnxruntime runs without torch."""
    if importlib.util.find_spec("onnxscript") is None:  # torch's exporter imports it: a one-line error instead
        raise MbsbenchError("--onnx: torch's ONNX exporter needs onnxscript and onnx: pip install -e '.[onnx]'")
    inputs, outputs = state_names(step)
    frame = torch.zeros(1, step.cfg.n_fft, dtype=step.analysis.dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the exporter reports each of its stages on stdout, and warns of torchvision's absence: ours are results only
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(step, (frame, *step.initial_state(1)), str(path), input_names=inputs,
                          output_names=outputs, dynamo=True, optimize=True, verbose=False)
    return path


class OnnxStep:
    """An exported step in onnxruntime, called as FrameStep is: (frame, *state) -> (synthesis, *state)."""

    def __init__(self, path: Path, step: FrameStep):
        if onnxruntime is None:
            raise MbsbenchError("--runtime onnxruntime: pip install -e '.[onnx]'")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same threads as the torch step it stands in for
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs, _ = state_names(step)

    def __call__(self, frame: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        feeds = {name: np.ascontiguousarray(t.numpy()) for name, t in zip(self.inputs, (frame, *state))}
        return tuple(torch.from_numpy(out) for out in self.session.run(None, feeds))
