"""What MLflow holds, as tidy pandas frames: profiles, trained runs, studies and their trials."""

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from bench.quality.stats import mean_ci
from bench.tracking.schema import DNSMOS_METRICS, EXPERIMENTS, PAPER_METRICS
from bench.tracking.store import runs_table
from variants.errors import MbsbenchError

PROFILE = ("params_m", "macs_g_per_s", "peak_mem_train_mib", "max_batch_train", "rtf_infer", "train_step_s",
           "pred_cuda_peak_alloc_mib", "pred_cuda_peak_reserved_mib", "pred_max_batch_cuda",
           "compiled_train_step_s")


@dataclass
class Store:
    """The runs of each mbsbench experiment in one tracking store."""

    uri: str
    profiles: pd.DataFrame
    runs: pd.DataFrame
    trials: pd.DataFrame
    studies: pd.DataFrame
    streams: pd.DataFrame = field(default_factory=pd.DataFrame)
    device: str = ""  # the device the profiles and runs were kept for ('' : all)

    def devices(self) -> list[str]:
        """The devices the profiles and trained runs were measured on, oldest first."""
        frames = [f[["start_time", "device"]] for f in (self.profiles, self.runs, self.streams)
                  if not f.empty and "device" in f]
        if not frames:
            return []
        return list(dict.fromkeys(pd.concat(frames).sort_values("start_time")["device"].dropna()))

    def on(self, device: str) -> "Store":
        """Only the profiles and runs of devices whose name contains `device` (the studies stay)."""
        def keep(frame: pd.DataFrame) -> pd.DataFrame:
            if frame.empty or "device" not in frame:
                return frame
            return frame[frame["device"].fillna("").str.contains(device, regex=False)].copy()

        return replace(self, profiles=keep(self.profiles), runs=keep(self.runs), streams=keep(self.streams),
                       device=device)


def _finished(frame: pd.DataFrame, task: str | None = None) -> pd.DataFrame:
    if frame.empty:
        return frame
    keep = frame["run_status"] == "FINISHED"
    if task and "task" in frame:
        keep &= frame["task"] == task
    return frame[keep].copy()


def load_store(uri: str) -> Store:
    """Every finished profile, trained run and study trial; an error when the store holds none."""
    study_runs = runs_table(uri, EXPERIMENTS["study"])
    store = Store(uri, _finished(runs_table(uri, EXPERIMENTS["profile"])),
                  _finished(runs_table(uri, EXPERIMENTS["run"]), "run"),
                  _finished(study_runs, "study-trial"), _finished(study_runs, "study"),
                  _finished(runs_table(uri, EXPERIMENTS["stream"]), "stream"))
    if store.profiles.empty and store.runs.empty and store.trials.empty and store.streams.empty:
        raise MbsbenchError(f"no mbsbench runs in {uri}: run python -m bench profile / run first")
    return store


def metric(frame: pd.DataFrame, name: str) -> pd.Series:
    """A figure's column, or NaN for every run when none logged it."""
    return frame[name] if name in frame else pd.Series(np.nan, index=frame.index)


def newest_profile_runs(store: Store) -> pd.DataFrame:
    """The newest profile run of each variant: the one the tables show."""
    frame = store.profiles
    return frame if frame.empty else frame.sort_values("start_time").groupby("variant").tail(1)


def run_commands(frame: pd.DataFrame) -> tuple[list[str], int]:
    """The distinct commands that made these runs, oldest run first, and how many runs recorded none."""
    if frame.empty:
        return [], 0
    frame = frame.sort_values("start_time") if "start_time" in frame else frame
    logged = [c for c in frame.get("command", pd.Series(dtype=object)) if isinstance(c, str) and c]
    return list(dict.fromkeys(logged)), len(frame) - len(logged)


def latest_profiles(store: Store) -> pd.DataFrame:
    """One row per variant: its newest profile, with the conditions it was measured under."""
    frame = newest_profile_runs(store)
    if frame.empty:
        return pd.DataFrame()
    out = pd.DataFrame({"variant": frame["variant"]})
    for name in PROFILE:
        out[name] = metric(frame, name).to_numpy()
    for cond in ("run_batch", "run_seconds", "run_device", "run_budget_gb", "run_max_batch_method", "run_compiled"):
        out[cond] = frame.get(f"{cond}", pd.Series("", index=frame.index)).to_numpy()
    return out.set_index("variant")


# figures a trained run logs too, fixed by the config alone (no device, batch or length in them)
CONFIG_FIGURES = ("params_m", "macs_g_per_s")


# what made the scores (bench.quality.metrics.scorers): runs that differ in any are never averaged together
SCORER_TAGS = ("scorer_pesq", "scorer_stoi", "dnsmos_scorer", "dnsmos_p835_sha256", "dnsmos_p808_sha256")
QUALITY_METRICS = PAPER_METRICS + DNSMOS_METRICS


def scorers_of(runs: pd.DataFrame) -> dict[str, str]:
    """The one scorer of each kind behind these runs' scores; a one-line error naming two runs that differ."""
    out = {}
    for tag in (t for t in SCORER_TAGS if t in runs):
        used = runs[runs[tag].notna() & (runs[tag] != "")]
        values = list(dict.fromkeys(used[tag]))
        if len(values) > 1:
            first, other = (used[used[tag] == v]["run_id"].iloc[0] for v in values[:2])
            raise MbsbenchError(f"runs scored by different scorers are not averaged together: {tag} is "
                                f"{values[0]!r} in run {first} and {values[1]!r} in run {other}")
        if values:
            out[tag] = values[0]
    return out


def quality_by_variant(store: Store, pcs: bool = False) -> pd.DataFrame:
    """Per variant, mean and CI over seeds of each quality metric (the '_pcs' ones when pcs), and the figures that
    depend on the config alone (CONFIG_FIGURES). Runs scored by different scorers are refused (scorers_of)."""
    runs = store.runs
    if runs.empty:
        return pd.DataFrame()
    scorers_of(runs)
    rows = []
    for variant, group in runs.groupby("variant"):
        row = {"variant": variant, "seeds": len(group), "data": group.get("data", pd.Series([""])).iloc[0]}
        for name in QUALITY_METRICS:
            row[name], row[f"{name}_ci"], _ = mean_ci(metric(group, name + ("_pcs" if pcs else "")))
        for name in CONFIG_FIGURES:  # the same for every seed: they depend on the config alone
            row[name] = float(metric(group, name).mean())
        row["train_steps"], row["train_epochs"] = (float(metric(group, k).max()) for k in ("train_steps",
                                                                                           "train_epochs"))
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def noisy_quality(store: Store) -> dict[str, float]:
    """The noisy input's metrics as the runs recorded them (same test set)."""
    if store.runs.empty:
        return {}
    return {name: float(metric(store.runs, f"noisy_{name}").dropna().mean()) for name in QUALITY_METRICS}


def pareto_mask(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """Rows (n, k) that no other row beats: at least as good on every objective and better on one."""
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    costs = np.asarray(values, dtype=float) * signs
    dominated = [(np.all(costs <= row, axis=1) & np.any(costs < row, axis=1)).any() for row in costs]
    return ~np.array(dominated, dtype=bool)


def study_objective(store: Store, study: str) -> tuple[list[str], list[str]] | None:
    """The metric names and directions the study's own run recorded, or None for a study that recorded none."""
    runs = store.studies
    if runs.empty or "objective_metrics" not in runs:
        return None
    mine = runs[runs["study"] == study].dropna(subset=["objective_metrics"])
    if mine.empty:
        return None
    row = mine.iloc[-1]
    return row["objective_metrics"].split(","), row["objective_directions"].split(",")
