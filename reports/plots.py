"""Figures from MLflow: Pareto fronts, memory vs length, training curves, study history (PNG and PDF)."""

from pathlib import Path

import pandas as pd

from bench.tracking.store import metric_history
from reports.collect import Store, latest_profiles, pareto_mask, quality_by_variant, study_objective

PARETO_AXES = {"params_m": "parameters (M)", "macs_g_per_s": "GMAC per second of audio",
               "peak_mem_train_mib": "peak training memory (MiB)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, folder: Path, name: str) -> list[Path]:
    paths = [folder / f"{name}.png", folder / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, bbox_inches="tight", dpi=150)
    _pyplot().close(fig)
    return paths


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points no other point beats on both axes (lower x, higher y), in order of x."""
    return points[pareto_mask(points[[x, y]].to_numpy(), ["minimize", "maximize"])].sort_values(x)


def pareto_plots(store: Store, folder: Path) -> list[Path]:
    """PESQ against parameters, MACs and memory, one point per variant both profiled and trained."""
    profiles, quality = latest_profiles(store), quality_by_variant(store)
    if profiles.empty or quality.empty:
        return []
    both = profiles.join(quality[["pesq_wb"]], how="inner").dropna(subset=["pesq_wb"])
    written = []
    for x, label in PARETO_AXES.items():
        points = both.dropna(subset=[x])
        if points.empty:
            continue
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.scatter(points[x], points["pesq_wb"], color="tab:blue")
        for name, row in points.iterrows():
            ax.annotate(name, (row[x], row["pesq_wb"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = pareto_front(points, x, "pesq_wb")
        ax.step(front[x], front["pesq_wb"], where="post", color="tab:red", label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel("PESQ (wideband), test split")
        ax.legend(fontsize=7)
        written += _save(fig, folder, f"pareto_pesq_{x}")
    return written


def memory_vs_length(store: Store, folder: Path) -> list[Path]:
    frame = store.profiles.sort_values("start_time").groupby("variant").tail(1) if len(store.profiles) else []
    curves = {}
    for _, run in (frame.iterrows() if len(frame) else []):
        for column in [c for c in run.index if c.startswith("peak_mem_train_mib_b") and run[c] == run[c]]:
            history = metric_history(store.uri, run["run_id"], column)
            if len(history) > 1:
                curves[f"{run['variant']} (batch {column.rsplit('_b', 1)[1]})"] = history
    if not curves:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, history in curves.items():
        ax.plot([s / 1000 for s, _ in history], [v for _, v in history], marker="o", label=label)
    ax.set_xlabel("seconds of audio per utterance")
    ax.set_ylabel("peak training memory (MiB)")
    ax.legend(fontsize=6)
    return _save(fig, folder, "memory_vs_length")


def training_curves(store: Store, folder: Path) -> list[Path]:
    if store.runs.empty:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for _, run in store.runs.iterrows():
        label = f"{run['variant']} seed {run.get('seed', '0')}"
        for key, style in (("train_loss", "-"), ("val_loss", "o--")):
            history = metric_history(store.uri, run["run_id"], key)
            if history:
                ax.plot(*zip(*history), style, label=f"{label} {key}", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=6)
    return _save(fig, folder, "training_curves")


def study_history(store: Store, folder: Path) -> list[Path]:
    trials = store.trials
    if trials.empty:
        return []
    written = []
    for study, group in trials.groupby("study"):
        objective = study_objective(store, study)
        columns = list(objective[0]) if objective else []
        columns = [c for c in columns if c in group and group[c].notna().any()]
        if not columns:
            continue
        plt = _pyplot()
        fig, axes = plt.subplots(len(columns), 1, figsize=(5, 3.5 * len(columns)), squeeze=False)
        numbers = group["trial"].astype(int)
        for ax, column in zip(axes[:, 0], columns):
            ax.plot(numbers, group[column], "o", label="trial")
            ax.set_xlabel("trial")
            ax.set_ylabel(column)
        axes[0, 0].set_title(study, fontsize=8)
        written += _save(fig, folder, f"study_{study}")
    return written


def importance_plots(store: Store, folder: Path) -> list[Path]:
    """Parameter importances (fANOVA) that each single-objective study logged to its MLflow run."""
    studies = store.studies
    if studies.empty:
        return []
    written = []
    for _, run in studies.sort_values("start_time").groupby("study").tail(1).iterrows():
        importances = {c[len("importance_"):]: run[c] for c in run.index
                       if c.startswith("importance_") and run[c] == run[c]}
        if not importances:
            continue
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(4, 2.5))
        ax.barh(list(importances), list(importances.values()))
        ax.set_xlabel("importance (fANOVA)")
        ax.set_title(run["study"], fontsize=8)
        written += _save(fig, folder, f"importance_{run['study']}")
    return written


# each plot, and what it needs from the store: a plot the store has no data for is left out, saying this
PLOTS = (
    (pareto_plots, "Pareto fronts (PESQ against params, MACs, memory)", "variants both profiled and trained"),
    (memory_vs_length, "memory vs length", "a profile measured at two or more lengths (bench profile --lengths)"),
    (training_curves, "training curves", "a trained run (bench run)"),
    (study_history, "study history", "a study with its objective logged (studies search)"),
    (importance_plots, "importances", "a single-objective study that logged importances"),
)


def make_plots(store: Store, folder: Path) -> tuple[list[Path], list[str]]:
    """Every plot the store has data for, as PNG and PDF in folder; and the ones left out, each with what it needs."""
    folder.mkdir(parents=True, exist_ok=True)
    written, left_out = [], []
    for plot, name, needs in PLOTS:
        paths = plot(store, folder)
        written += paths
        if not paths:
            left_out.append(f"left out: {name}: needs {needs}")
    return written, left_out
