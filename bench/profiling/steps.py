"""One step's figures from one workload: one instrumented call (peak memory, ops), then timed calls."""

from bench.profiling.instruments import MIB
from bench.profiling.memory import MemoryCurve
from bench.profiling.timing import step_throughput


def measure_step(curve: MemoryCurve, mode: str) -> tuple[dict, dict]:
    """The curve's point at the settings' (batch, seconds) in `mode` and, when it fitted, the step's figures:
    peak memory, aten ops and Triton launches of the instrumented call, the timed repeats after it ({} else).

    The instrumented call comes first (after the optimizer state is primed: MemoryCurve.measure) and is the
    timing's warm-up: a step measured three ways runs 1 + repeats times, where separate measurements ran 5 + repeats.
    """
    s = curve.settings
    point = curve.measure(s.batch, s.seconds, mode,
                          then=lambda step: step_throughput(step, s, mode, max(s.warmup - 1, 0)))
    if point["status"] != "ok":
        return point, {}
    return point, {f"peak_mem_{mode}_mib": point["peak_bytes"] / MIB, f"ops_{mode}_step": point["ops"],
                   f"triton_launches_{mode}_step": point["triton_launches"]} | point.pop("figures")
