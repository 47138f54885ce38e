"""torch.compile for every room: what can compile here (a one-line refusal otherwise) and the compiled module.

Never a silent fallback to eager: a mode that cannot run here is refused before any work. Which scans keep an
utterance's length symbolic decides whether one compiled graph serves every length (validation on whole
utterances) or each length compiles again. torch is imported only to compile: requests are checked without it.
"""

import shutil
import sys
from typing import TYPE_CHECKING

from variants.errors import MbsbenchError

if TYPE_CHECKING:
    from torch import nn

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
CXX_COMPILERS = ("g++", "c++", "clang++")
# one torch operator each: the length flows through them as a symbol. The other scans loop over chunks or steps in
# Python, so a graph unrolls them for one length and every new length compiles again
SYMBOLIC_LENGTH_SCANS = ("triton", "cuda", "cpu_fused")


def unknown_mode(mode: str | None) -> str:
    """Why a mode is not one torch.compile has ('' for a known one, or None: eager)."""
    return "" if mode in (None, *COMPILE_MODES) else f"--compile {mode!r}: expected one of {', '.join(COMPILE_MODES)}"


def compile_unavailable(mode: str, device: str) -> str:
    """Why torch.compile cannot run here in this mode ('' where it can): what is missing, named."""
    if reason := unknown_mode(mode):
        return reason
    if sys.platform == "win32":
        return "--compile: torch.compile's inductor backend is not supported on Windows"
    kind = str(device).split(":")[0]
    if mode == "reduce-overhead" and kind != "cuda":
        return "--compile reduce-overhead: CUDA graphs need a CUDA device; use default or max-autotune here"
    if kind == "cpu" and not any(shutil.which(name) for name in CXX_COMPILERS):
        return f"--compile: inductor needs a C++ compiler on the CPU and none of {', '.join(CXX_COMPILERS)} is on PATH"
    return ""


def check_compile(mode: str | None, device: str) -> None:
    """A one-line refusal before any work, never a silent fallback to eager."""
    reason = compile_unavailable(mode, device) if mode else ""
    if reason:
        raise MbsbenchError(reason)


def compile_model(model: "nn.Module", mode: str) -> "nn.Module":
    """torch.compile (inductor) of a model in `mode`; LSTMs traced into the graph, not a break (bsrnn)."""
    import torch

    torch._dynamo.config.allow_rnn = True  # process-wide: it only widens what dynamo traces
    return torch.compile(model, mode=mode)


def length_is_symbolic(scan: str) -> bool:
    """Whether a compiled model with this (resolved) scan serves every utterance length with one graph."""
    return scan in SYMBOLIC_LENGTH_SCANS


def compile_wait(arch: str, scan: str) -> str:
    """What the first compiled call will cost, said before it starts: minutes where the (resolved) scan loops in
    Python and the graph unrolls its loops (optimized's default `chunked`, training at batch 6, 2 s: 735 s here), else
    ""."""
    if arch != "mbsnet" or length_is_symbolic(scan):
        return ""
    return (f" (scan {scan} loops in Python and the graph unrolls its loops: compiling can take minutes; the "
            f"one-operator scans, {', '.join(SYMBOLIC_LENGTH_SCANS)}, take seconds)")
