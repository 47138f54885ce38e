"""Per-utterance speech-quality metrics at 16 kHz, full length, and their summaries.

PESQ (wideband, `pesq` package), STOI and ESTOI (`pystoi`), CSIG/CBAK/COVL and segmental SNR
(composite.py), SI-SDR. An utterance whose reference cannot be scored gets NaN and a reason and is
left out; one whose enhanced output cannot be scored is scored at each metric's worst value.
"""

import math
import multiprocessing
import sys
import warnings
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version

import numpy as np
import pandas as pd
from pesq import pesq
from pystoi import stoi
from threadpoolctl import threadpool_limits

from bench.interrupts import ignore_interrupts
from bench.quality.composite import composite
from bench.quality.dnsmos import dnsmos_scores, provenance
from bench.quality.stats import mean_ci
from bench.tracking.schema import DNSMOS_METRICS, METRICS, WORST

RATE = 16000


def pesq_wb(clean: np.ndarray, enhanced: np.ndarray) -> tuple[float, str]:
    """Wideband PESQ (ITU-T P.862.2) MOS-LQO, or NaN and the scorer's reason."""
    try:
        return float(pesq(RATE, clean, enhanced, "wb")), ""
    except Exception as err:  # the package raises its own error classes for unscorable input
        return math.nan, f"pesq: {type(err).__name__} {str(err)[:100]}".strip()


def stoi_pair(clean: np.ndarray, enhanced: np.ndarray, extended: bool) -> tuple[float, str]:
    """STOI or ESTOI; NaN when there are too few active frames (pystoi would return 1e-5 or 0)."""
    name = "estoi" if extended else "stoi"
    if not np.any(clean):  # pystoi keeps every frame of a silent reference and returns a silent 0
        return math.nan, f"{name}: not enough active (non-silent) frames: silent reference"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(stoi(clean, enhanced, RATE, extended=extended))
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        return math.nan, f"{name}: not enough active (non-silent) frames"
    return value, ""


def si_sdr(clean: np.ndarray, enhanced: np.ndarray) -> tuple[float, str]:
    """Scale-invariant SDR in dB (Le Roux et al. 2019), zero-mean signals."""
    s = clean.astype(np.float64) - clean.mean()
    e = enhanced.astype(np.float64) - enhanced.mean()
    energy = np.dot(s, s)
    if energy == 0:
        return math.nan, "si_sdr: silent reference"
    target = np.dot(e, s) / energy * s
    residual = e - target
    return float(10 * np.log10(np.dot(target, target) / max(np.dot(residual, residual), 1e-300))), ""


def unscorable(clean: np.ndarray, enhanced: np.ndarray) -> tuple[str, str]:
    """Why a pair cannot be scored: (reference problem, output problem), '' where there is none.

    A silent or non-finite reference leaves the utterance out (NaN, counted); a silent or non-finite
    enhanced output is the model's failure, scored at each metric's worst value (schema.WORST).
    """
    reference = signal_problem(clean, "reference")
    return reference, signal_problem(enhanced, "enhanced output") if not reference else ""


def signal_problem(signal: np.ndarray, side: str) -> str:
    """Why one signal cannot be scored ('' where it can): non-finite samples or digital silence."""
    if not np.isfinite(signal).all():
        return f"{side} has non-finite samples"
    return "" if np.any(signal) else f"{side} is digital silence"


def score_pair(clean: np.ndarray | None, enhanced: np.ndarray, compat: bool = False, dnsmos: bool = False) -> dict:
    """Every metric of one utterance, 'failed' (the output was unscorable) and 'reasons' for NaN or failure.
    Without a clean reference (clean None) only the non-intrusive metrics are computed, the others NaN."""
    if clean is None:
        out = dict.fromkeys((*METRICS, "llr", "wss"), math.nan)
        reasons = ["no clean reference: intrusive metrics not computed"]
        output = signal_problem(enhanced, "enhanced output")
    else:
        n = min(len(clean), len(enhanced))
        clean, enhanced = np.asarray(clean[:n], np.float64), np.asarray(enhanced[:n], np.float64)
        reference, output = unscorable(clean, enhanced)
        if reference:
            names = METRICS + (DNSMOS_METRICS if dnsmos else ())
            return dict.fromkeys(names, math.nan) | {"llr": math.nan, "wss": math.nan, "failed": False,
                                                     "reasons": reference}
        worst = {m: WORST[m] for m in METRICS} | {"llr": math.nan, "wss": math.nan}
        out, reasons = _intrusive(clean, enhanced, compat) if not output else (worst, [])
    if dnsmos:
        values, note = ({m: WORST[m] for m in DNSMOS_METRICS}, "") if output else dnsmos_scores(enhanced)
        out |= values
        reasons += [note] if note else []
    return out | {"failed": bool(output), "reasons": output or "; ".join(reasons)}


def _intrusive(clean: np.ndarray, enhanced: np.ndarray, compat: bool) -> tuple[dict, list[str]]:
    """The metrics that compare the output with the clean reference, and the reasons for any NaN."""
    out, reasons = {}, []
    for name, (value, reason) in (
        ("pesq_wb", pesq_wb(clean, enhanced)),
        ("stoi", stoi_pair(clean, enhanced, False)),
        ("estoi", stoi_pair(clean, enhanced, True)),
        ("si_sdr", si_sdr(clean, enhanced)),
    ):
        out[name] = value
        reasons += [reason] if reason else []
    parts = composite(clean, enhanced, out["pesq_wb"], RATE, compat)
    if math.isnan(out["pesq_wb"]):
        parts |= {k: math.nan for k in ("csig", "cbak", "covl")}
        reasons.append("csig/cbak/covl: need PESQ")
    if math.isnan(parts["ssnr"]):
        reasons.append("ssnr: shorter than one 30 ms frame")
    out |= {k: parts[k] for k in ("csig", "cbak", "covl", "ssnr")} | {"llr": parts["llr"], "wss": parts["wss"]}
    return out, reasons


def scorers(dnsmos: bool = False, intrusive: bool = True) -> dict[str, str]:
    """Which packages (and model files) made the scores: logged with every score, printed under its table."""
    out = {"scorer_pesq": f"pesq {version('pesq')}", "scorer_stoi": f"pystoi {version('pystoi')}"} if intrusive else {}
    if dnsmos:
        out |= provenance()
    return out


def _score_item(item: tuple) -> dict:
    key, clean, enhanced, compat, dnsmos = item
    return {"id": key} | score_pair(clean, enhanced, compat, dnsmos)


def _single_threaded() -> None:
    """Each metric process uses one core (BLAS threads on these small arrays only oversubscribe the machine)
    and leaves Ctrl-C to the parent, which stops the pool and reports once."""
    ignore_interrupts()
    threadpool_limits(1)


def score_many(items: Iterable[tuple[str, np.ndarray | None, np.ndarray]], workers: int = 0, compat: bool = False,
               progress=None, dnsmos: bool = False) -> list[dict]:
    """score_pair over (id, clean, enhanced) items in a pool of single-threaded processes (0: one per core)."""
    jobs = [(key, c, e, compat, dnsmos) for key, c, e in items]
    workers = workers or multiprocessing.cpu_count()
    if workers == 1 or len(jobs) < 2:
        results = []
        with threadpool_limits(1):
            for job in jobs:
                results.append(_score_item(job))
                if progress:
                    progress(1)
        return results
    results = []
    with ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_single_threaded) as pool:
        for result in pool.map(_score_item, jobs):  # one utterance per task: lengths vary, keep cores even
            results.append(result)
            if progress:
                progress(1)
    return results


def pesq_or_worst(item: tuple[np.ndarray, np.ndarray]) -> float:
    """Wideband PESQ of (clean, enhanced); the worst value for an unscorable output, NaN for a silent reference."""
    clean, enhanced = (np.asarray(x, np.float64) for x in item)
    reference, output = unscorable(clean, enhanced)
    if reference:
        return math.nan
    if output:
        return WORST["pesq_wb"]
    value, _ = pesq_wb(clean, enhanced)
    return WORST["pesq_wb"] if math.isnan(value) else value


class PesqPool:
    """A pool of single-threaded processes kept open across calls: the PESQ of each training batch."""

    def __init__(self, workers: int = 0):
        self.pool = ProcessPoolExecutor(workers or multiprocessing.cpu_count(), mp_context=_pool_context(),
                                        initializer=_single_threaded)

    def scores(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
        """pesq_or_worst of each (clean, enhanced), computed in parallel."""
        return list(self.pool.map(pesq_or_worst, pairs))

    def close(self) -> None:
        self.pool.shutdown()


def _pool_context():
    """fork where it is safe, else forkserver (else spawn).

    A spawned worker re-imports the caller's __main__ (torch, mlflow: seconds per worker), and the workers
    only run numpy, scipy and the PESQ C code, so fork is the fast choice; but a process that has initialised
    CUDA (its driver threads, NCCL's) must not fork: the children would inherit locks held by threads that are
    not there. forkserver forks them from a clean server process instead.
    """
    methods = multiprocessing.get_all_start_methods()
    torch = sys.modules.get("torch")  # imported by the caller or not: the check must not import it
    cuda_live = torch is not None and torch.cuda.is_initialized()
    if "fork" in methods and not cuda_live:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def summarize(table: pd.DataFrame, metrics: Iterable[str] = METRICS) -> pd.DataFrame:
    """Per metric: mean, std, 95% CI half-width (Student t), n scored, n failed (at the worst value), n total.

    'name_pcs' columns count failures from 'failed_pcs'; NaN (an unscorable reference) is left out.
    """
    rows = []
    for name in metrics:
        if name not in table:
            continue
        values = table[name].astype(float)
        mean, half, n = mean_ci(values)
        std = float(values.dropna().std(ddof=1)) if n > 1 else math.nan
        flag = "failed_pcs" if name.endswith("_pcs") else "failed"
        failed = int((table[flag].astype(bool) & values.notna()).sum()) if flag in table else 0
        rows.append({"metric": name, "mean": mean, "std": std, "ci95": half, "n_scored": n, "n_failed": failed,
                     "n_total": len(values)})
    return pd.DataFrame(rows)
