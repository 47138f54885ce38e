"""One training (or inference) step traced on fake tensors: every storage's birth and death, in order.

The model, its Adam state and the input are built inside torch's FakeTensorMode (nothing is allocated or
computed, shapes flow); a dispatch mode records each new
storage an op returns, and a finalizer records its free. The log covers the model's creation, a warm-up
step (which creates the optimizer state, as on a real GPU) and the measured step.
"""

import weakref
from dataclasses import dataclass, field

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from bench.profiling.instruments import TensorOutputs
from bench.profiling.workload import make_workload
from variants.config import ModelConfig
from variants.registry import build_model

PAGE = 4096
CATEGORIES = ("parameters", "gradients", "optimizer state", "input", "activations and temporaries")


def _good_ld(dim: int) -> int:
    """oneDNN's leading dimension for float32 (rnn_utils::get_good_ld): 64-byte aligned, never a multiple of 256."""
    ld = -(-dim // 16) * 16
    return ld + 16 if ld % 256 == 0 else ld


def lstm_workspace_bytes(steps: int, batch: int, inputs: int, hidden: int) -> int:
    """Bytes of the workspace oneDNN's float32 LSTM layer (one direction) keeps for backward when training.

    oneDNN's rnn_utils set_conf and set_offsets: the gates and h of each step, then five state arrays of
    (steps + 1) x 2 rows (states, c states, and the three diff states), each part starting on a 4 KiB page.
    torch's fake kernel returns an empty workspace; this is what the real one allocates (checked equal on
    324 shapes in tests/test_planning.py).
    """
    states, c_states = _good_ld(max(inputs, hidden)), hidden
    rows = 2 * (steps + 1) * batch
    parts = [steps * batch * _good_ld(4 * hidden), steps * batch * _good_ld(hidden), rows * states,
             rows * c_states, rows * states, rows * states, rows * c_states]
    return sum(-(-4 * part // PAGE) * PAGE for part in parts)


class LstmWorkspaces(TorchDispatchMode):
    """oneDNN's LSTM layer with the training workspace its real kernel allocates, in place of the fake kernel's
    empty one (float32: other dtypes take oneDNN paths whose workspace is not modelled)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is not torch.ops.aten.mkldnn_rnn_layer.default:
            return out
        given = dict(zip((a.name for a in func._schema.arguments), args)) | (kwargs or {})
        data = given["input"]
        if given["train"] and data.dtype == torch.float32:
            steps, batch = (data.shape[1], data.shape[0]) if given["batch_first"] else data.shape[:2]
            out = (*out[:3], out[3].new_empty(lstm_workspace_bytes(steps, batch, data.shape[-1],
                                                                   given["hidden_size"])))
        return out


@dataclass
class AllocationLog:
    """Events ('alloc', key, nbytes, phase) and ('free', key, 0, phase) in the order they happened."""

    events: list[tuple[str, int, int, str]] = field(default_factory=list)
    phase: str = "setup"
    measured_from: int = 0  # the index of the measured step's first event
    category: dict[int, str] = field(default_factory=dict)  # storage number -> category, set after the step
    _live: dict[int, tuple[weakref.ref, int]] = field(default_factory=dict)  # id -> (storage, its number)

    def _number(self, storage) -> int | None:
        known = self._live.get(id(storage))
        return known[1] if known is not None and known[0]() is storage else None

    def add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if self._number(storage) is not None or storage.nbytes() == 0:
            return
        number = len(self.events)  # a number of its own: ids are reused once a storage is gone
        self._live[id(storage)] = (weakref.ref(storage), number)
        weakref.finalize(storage, self._free, id(storage), number)
        self.events.append(("alloc", number, storage.nbytes(), self.phase))

    def _free(self, key: int, number: int) -> None:
        if self._live.get(key, (None, None))[1] == number:
            del self._live[key]
        self.events.append(("free", number, 0, self.phase))

    def label(self, tensors, category: str) -> None:
        """Mark the storages of live tensors (parameters, gradients, optimizer state) with their category."""
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor) and self._number(tensor.untyped_storage()) is not None:
                self.category[self._number(tensor.untyped_storage())] = category


def trace_step(cfg: ModelConfig, batch: int, seconds: float, mode: str = "train",
               dtype: str = "float32") -> AllocationLog:
    """The allocation log of building the workload, a warm-up step and the measured `mode` step.

    Traced on fake CPU tensors with the config's own scan: a CPU-only torch cannot run CUDA's device guards
    even on fake tensors, and the scan is the one part whose code differs by device (a CUDA plan passes the
    CUDA scan, whose fake implementation gives its outputs' shapes).
    """
    log = AllocationLog()
    with FakeTensorMode(), TensorOutputs(log.add), LstmWorkspaces():
        torch.manual_seed(0)
        model = build_model(cfg)
        log.label(model.parameters(), "parameters")
        work = make_workload(model, cfg, batch, seconds, "cpu", dtype)
        log.label([work.wav], "input")
        log.phase = "warm-up"
        work.step(mode)()
        log.measured_from, log.phase = len(log.events), mode
        work.step(mode)()
        log.label([p.grad for p in model.parameters()], "gradients")
        log.label([t for state in work.optimizer.state.values() for t in state.values()], "optimizer state")
        del work, model
    return log
