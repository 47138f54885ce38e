"""Was the machine busy while we timed? Other processes' CPU use during the timed steps, from the kernel's counts.

A step timed while another process runs is not this machine's figure: torch's intra-op threads spin against
the other process (a training step ran 15-20x slower beside one CPU-bound process on 2 cores). The load
average reacts over a minute; /proc/stat's busy time of every core minus this process's own CPU time
(getrusage) says how many cores others used during exactly the timed window, steal time of a VM included.
"""

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

OTHER_CORES_LIMIT = 0.5  # others using half a core or more on average during the timing: the row is contended
MIN_WINDOW_S = 0.25  # the kernel counts in 10 ms ticks: a shorter window cannot tell half a core from noise
STAT = Path("/proc/stat")


def _busy_seconds() -> float | None:
    """Seconds every core spent busy since boot (user, nice, system, irq, softirq, steal), or None off Linux."""
    try:
        fields = STAT.read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuWindow:
    """Context manager: wall time, this process's CPU time and other processes' cores in use over a block."""

    wall_s: float = 0.0
    own_cores: float = 0.0
    other_cores: float | None = None  # None where the kernel's counts cannot be read, or the window was too short

    def __enter__(self) -> "CpuWindow":
        self._start = (time.perf_counter(), _own_seconds(), _busy_seconds())
        return self

    def __exit__(self, *exc: object) -> None:
        wall0, own0, busy0 = self._start
        busy1 = _busy_seconds()
        self.wall_s = max(time.perf_counter() - wall0, 1e-9)
        own = _own_seconds() - own0
        self.own_cores = own / self.wall_s
        if busy0 is not None and busy1 is not None and self.wall_s >= MIN_WINDOW_S:
            self.other_cores = max(busy1 - busy0 - own, 0.0) / self.wall_s

    @property
    def contended(self) -> bool:
        return self.other_cores is not None and self.other_cores >= OTHER_CORES_LIMIT


def timing_label(timings: list[dict]) -> tuple[float | None, bool, str]:
    """Over several time_call results: the most cores others used, whether any was contended, and the label a
    table shows: 'idle', 'busy N.NN' (contended) or '-' (unknown)."""
    others = [t["other_cores"] for t in timings if t.get("other_cores") is not None]
    worst, contended = (max(others) if others else None), any(t.get("contended") for t in timings)
    return worst, contended, "-" if worst is None else f"busy {worst:.2f}" if contended else "idle"


def contention_note(other_cores: float | None) -> str:
    """One line on a timing's conditions: other processes' cores in use while it ran."""
    if other_cores is None:
        return "other processes' CPU use while timing unknown (no /proc/stat, or a window under 0.25 s)"
    return f"timed while other processes used {other_cores:.2f} cores"


TIMED = ("infer", "train")


def timing_conditions(row: dict, strict: bool) -> dict:
    """What the row's times were measured under: the most cores other processes used while a mode was timed,
    'idle' or 'busy N.NN' (contended: half a core or more); with strict timing a contended row is refused,
    its times dropped and its status 'refused'."""
    worst, contended, label = timing_label([{"other_cores": row.get(f"{m}_other_cores"),
                                             "contended": row.get(f"{m}_contended")} for m in TIMED])
    out = {"timing_other_cores": worst, "timing_contended": contended, "timing": label}
    if contended and strict:
        dropped = [k for k in row if (k.startswith(TIMED) and k.endswith("_s")) or k.startswith("rtf_")]
        out |= dict.fromkeys(dropped) | {"status": "refused", "reason": f"{contention_note(worst)} (--strict-timing)"}
    return out
