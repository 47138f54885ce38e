"""`python -m bench.doctor --compile-only`: every Triton kernel of the project, at every specialization it
launches, compiled for real NVIDIA targets by Triton's own ahead-of-time compiler (no GPU needed: the triton
wheel ships ptxas).

The specializations come from the launches themselves: each scan call the project makes (the registered
variants' time and band scans at several batches and lengths, the study knobs d_state 4-32 and chunk 8-128,
float32, bf16 and float64 inputs, with and without h0) is turned into its kernel arguments by the same code
that launches it (on meta tensors), and Triton's own launch binder says which signature and constexprs those
arguments compile to. Each distinct one is compiled once per target, down to a cubin.

Per kernel and target: how many specializations compiled, the most registers and spilled bytes (ptxas's
report), shared memory, and the width of every pointer offset in the compiled IR (`tt.addptr`): a buffer can
pass 2**31 elements, so every offset must be 64-bit.
"""

import contextlib
import io
import re
import time
from dataclasses import dataclass

import torch

from variants.registry import build_config, list_variants
from variants.scan_triton import LAUNCH_OPTIONS, Launch, backward_launch, forward_launch, jit

STUDY_D_STATES = tuple(range(4, 33))  # the d_state knob of studies/space.py spans these (a test keeps them in step)
STUDY_CHUNKS = (8, 16, 32, 64, 128)  # the chunk_size knob of studies/space.py
DTYPES = (torch.float32, torch.bfloat16, torch.float64)
BATCHES, SECONDS = (1, 6), (1.0, 2.0, 10.0)
BANDS = 31


@dataclass(frozen=True)
class ScanCall:
    """One scan call: b sequences of l steps, d channels, state size n, the chunk, the inputs' dtype, h0 or not."""

    b: int
    l: int  # noqa: E741 - the paper's symbol
    d: int
    n: int
    chunk: int
    dtype: torch.dtype
    h0: bool


def model_calls() -> set[tuple[int, int, int, int, int]]:
    """(b, l, d, n, chunk) of the registered variants' scans: over time (b = batch x bands) and over bands."""
    shapes = set()
    for cfg in (build_config(name) for name in list_variants()):
        if cfg.arch != "mbsnet":
            continue
        for batch in BATCHES:
            for seconds in SECONDS:
                frames = 1 + round(seconds * cfg.sample_rate) // cfg.hop
                shapes.add((batch * BANDS, frames, cfg.d_inner, cfg.d_state, cfg.chunk_size))
                if cfg.band_mixer == "bimamba":
                    shapes.add((batch * frames, BANDS, cfg.d_inner, cfg.d_state, cfg.chunk_size))
    return shapes


def project_calls() -> list[ScanCall]:
    """Every scan call the project makes: the models', the study knobs', in each dtype, with and without h0."""
    shapes = model_calls()
    shapes |= {(BANDS, 251, 128, n, chunk) for n in STUDY_D_STATES for chunk in STUDY_CHUNKS}
    return [ScanCall(*shape, dtype, h0) for shape in sorted(shapes) for dtype in DTYPES for h0 in (False, True)]


def call_launches(call: ScanCall) -> list[Launch]:
    """The forward and backward launches of one call, built on meta tensors by the code that launches them."""
    def meta(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device="meta", dtype=call.dtype)

    inputs = [meta(call.b, call.l, call.d), meta(call.b, call.l, call.d), meta(call.d, call.n),
              meta(call.b, call.l, call.n), meta(call.b, call.l, call.n), meta(call.d)]
    h0 = meta(call.b, call.d, call.n) if call.h0 else None
    forward, y, starts = forward_launch(inputs, h0, call.chunk)
    backward, _ = backward_launch(inputs, y, starts, call.chunk)
    return [forward, backward]


def specialization(launch: Launch, backend) -> tuple:
    """(signature, constexprs, attrs, options) that Triton's own launch binder gives these arguments."""
    from triton.runtime.jit import create_function_from_signature

    fn = jit(False)[launch.kernel]
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = launch.meta | LAUNCH_OPTIONS
    bound, spec, options = binder(*launch.args, **kwargs)
    return fn._pack_args(backend, kwargs, bound, spec, options)


def _key(kernel: str, signature: dict, constexprs: dict, attrs: dict) -> str:
    return repr((kernel, sorted(signature.items()), sorted((k, str(v)) for k, v in constexprs.items()),
                 sorted(attrs.items())))


def specializations(target: int) -> dict[str, tuple[str, tuple]]:
    """Distinct (kernel, specialization) of every project call for a target, by key."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    backend = make_backend(GPUTarget("cuda", target, 32))
    found = {}
    for call in project_calls():
        for launch in call_launches(call):
            spec = specialization(launch, backend)
            found.setdefault(_key(launch.kernel, *spec[1:4]), (launch.kernel, spec))
    return found


def ptxas_figures(log: str) -> dict[str, int]:
    """Registers and spilled bytes from ptxas's -v report."""
    registers = re.search(r"Used (\d+) registers", log)
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    return {"registers": int(registers[1]) if registers else -1, "spill_bytes": sum(spills)}


def offset_widths(ttir: str) -> list[str]:
    """The integer widths of every pointer offset (`tt.addptr`) in Triton's IR, e.g. ['i64']."""
    return sorted(set(re.findall(r"tt\.addptr .*?, (?:tensor<[0-9x]*x)?(i\d+)>? ", ttir)))


def compile_one(kernel: str, spec: tuple, target: int) -> dict:
    """Compile one specialization to a cubin; its figures, or the error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    options, signature, constexprs, attrs = spec
    log = io.StringIO()
    started = time.perf_counter()
    try:
        with triton.knobs.compilation.scope(), triton.knobs.nvidia.scope(), contextlib.redirect_stdout(log):
            triton.knobs.compilation.always_compile = True  # a real compile, never a cache hit
            triton.knobs.nvidia.dump_ptxas_log = True
            compiled = triton.compile(ASTSource(jit(False)[kernel], signature, constexprs, attrs),
                                      target=GPUTarget("cuda", target, 32), options=options.__dict__)
    except Exception as err:  # a compile error is this row's result; Triton's reason is its message's last line
        reason = [line for line in str(err).splitlines() if line.strip()][-1:] or [type(err).__name__]
        return {"ok": False, "error": f"{type(err).__name__}: {reason[0].strip()[:300]}",
                "seconds": time.perf_counter() - started}
    widths = offset_widths(compiled.asm["ttir"])
    return {"ok": widths == ["i64"] and bool(compiled.asm["cubin"]), "seconds": time.perf_counter() - started,
            "shared_bytes": compiled.metadata.shared, "offsets": ",".join(widths), **ptxas_figures(log.getvalue())}


def constexpr_values(signature: dict, constexprs: dict) -> dict[str, str]:
    """The constexprs of a specialization by parameter name (Triton keys them by argument position)."""
    names = list(signature)
    return {names[path[0]]: str(value) for path, value in constexprs.items()}


def compile_all(targets: tuple[int, ...], progress=None) -> list[dict]:
    """One row per (kernel, specialization, target): compiled or the error, with its figures."""
    rows = []
    for target in targets:
        for kernel, spec in specializations(target).values():
            _, signature, constexprs, _ = spec
            row = {"kernel": kernel, "target": f"sm_{target}", "inputs": signature["u"].lstrip("*")}
            rows.append(row | constexpr_values(signature, constexprs) | compile_one(kernel, spec, target))
            if progress:
                progress(rows[-1])
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """One row per kernel x target: specializations compiled, the most registers, spills (and which spill: input
    dtype and BLOCK_N), shared memory, offset widths, the first error."""
    out = []
    for key in dict.fromkeys((r["kernel"], r["target"]) for r in rows):
        group = [r for r in rows if (r["kernel"], r["target"]) == key]
        done = [r for r in group if "registers" in r]
        errors = [r["error"] for r in group if "error" in r]
        spilling = [f"{r['inputs']} n{r['BLOCK_N']}" for r in done if r["spill_bytes"]]
        out.append({"kernel": key[0], "target": key[1], "compiled": f"{len(done)}/{len(group)}",
                    "registers": max((r["registers"] for r in done), default=None),
                    "spill_bytes": max((r["spill_bytes"] for r in done), default=None),
                    "spilling": ", ".join(spilling) or "none",
                    "shared_bytes": max((r["shared_bytes"] for r in done), default=None),
                    "offsets": ",".join(sorted({w for r in done for w in r["offsets"].split(",")})),
                    "seconds": round(sum(r["seconds"] for r in group), 1), "ok": all(r["ok"] for r in group),
                    "error": errors[0] if errors else "-"})
    return out
