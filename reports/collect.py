"""What MLflow holds, as tidy pandas frames: profiles, trained runs, study trials."""

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.tracking import experiment_runs
from variants.errors import MbsbenchError

QUALITY = ("pesq_wb", "csig", "cbak", "covl", "ssnr", "stoi")
PROFILE = ("params_m", "macs_g_per_s", "peak_mem_train_mib", "max_batch_train", "rtf_infer", "train_step_s")


@dataclass
class Store:
    """The runs of each mbsbench experiment in one tracking store."""

    uri: str
    profiles: pd.DataFrame
    runs: pd.DataFrame
    trials: pd.DataFrame


def _finished(frame: pd.DataFrame, task: str | None = None) -> pd.DataFrame:
    if frame.empty:
        return frame
    keep = frame["status"] == "FINISHED"
    if task and "tags.task" in frame:
        keep &= frame["tags.task"] == task
    return frame[keep].copy()


def load_store(uri: str) -> Store:
    """Every finished profile, trained run and study trial; an error when the store holds none."""
    store = Store(uri, _finished(experiment_runs(uri, "mbsbench-profile")),
                  _finished(experiment_runs(uri, "mbsbench-run"), "run"),
                  _finished(experiment_runs(uri, "mbsbench-study"), "study-trial"))
    if store.profiles.empty and store.runs.empty and store.trials.empty:
        raise MbsbenchError(f"no mbsbench runs in {uri}: run python -m bench profile / run first")
    return store


def metric(frame: pd.DataFrame, name: str) -> pd.Series:
    column = f"metrics.{name}"
    return frame[column] if column in frame else pd.Series(np.nan, index=frame.index)


def latest_profiles(store: Store) -> pd.DataFrame:
    """One row per variant: its newest profile, with the conditions it was measured under."""
    frame = store.profiles
    if frame.empty:
        return pd.DataFrame()
    frame = frame.sort_values("start_time").groupby("tags.variant").tail(1)
    out = pd.DataFrame({"variant": frame["tags.variant"]})
    for name in PROFILE:
        out[name] = metric(frame, name).to_numpy()
    for cond in ("run_batch", "run_seconds", "run_device", "run_budget_gb"):
        out[cond] = frame.get(f"params.{cond}", pd.Series("", index=frame.index)).to_numpy()
    return out.set_index("variant")


def mean_ci(values: pd.Series) -> tuple[float, float, int]:
    """Mean, 95% CI half-width (Student t, NaN for one value) and n of the non-missing values."""
    from scipy.stats import t as student_t

    values = values.dropna()
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(values.iloc[0]), math.nan, 1
    return float(values.mean()), float(student_t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)), n


def quality_by_variant(store: Store, pcs: bool = False) -> pd.DataFrame:
    """Per variant, mean and CI over seeds of each quality metric (the '_pcs' ones when pcs)."""
    runs = store.runs
    if runs.empty:
        return pd.DataFrame()
    rows = []
    for variant, group in runs.groupby("tags.variant"):
        row = {"variant": variant, "seeds": len(group), "data": group.get("params.data", pd.Series([""])).iloc[0]}
        for name in QUALITY:
            row[name], row[f"{name}_ci"], _ = mean_ci(metric(group, name + ("_pcs" if pcs else "")))
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def noisy_quality(store: Store) -> dict[str, float]:
    """The noisy input's metrics as the runs recorded them (same test set)."""
    if store.runs.empty:
        return {}
    return {name: float(metric(store.runs, f"noisy_{name}").dropna().mean()) for name in QUALITY}
