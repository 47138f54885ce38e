"""Figures from MLflow: Pareto fronts, memory vs length, training curves, study history (PNG and PDF)."""

from pathlib import Path

import pandas as pd

from reports.collect import Store, latest_profiles, quality_by_variant

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
    """Points no other point beats on both axes (lower x, higher y)."""
    ordered = points.sort_values([x, y], ascending=[True, False])
    best, keep = -float("inf"), []
    for name, row in ordered.iterrows():
        if row[y] > best:
            best = row[y]
            keep.append(name)
    return ordered.loc[keep]


def pareto_plots(store: Store, folder: Path) -> list[Path]:
    both = latest_profiles(store).join(quality_by_variant(store)[["pesq_wb"]], how="inner").dropna(subset=["pesq_wb"])
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
    from bench.tracking import metric_history

    frame = store.profiles.sort_values("start_time").groupby("tags.variant").tail(1) if len(store.profiles) else []
    curves = {}
    for _, run in (frame.iterrows() if len(frame) else []):
        for column in [c for c in run.index if c.startswith("metrics.peak_mem_train_mib_b") and run[c] == run[c]]:
            history = metric_history(store.uri, run["run_id"], column[len("metrics."):])
            if len(history) > 1:
                curves[f"{run['tags.variant']} (batch {column.rsplit('_b', 1)[1]})"] = history
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
    from bench.tracking import metric_history

    if store.runs.empty:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for _, run in store.runs.iterrows():
        label = f"{run['tags.variant']} seed {run.get('tags.seed', '0')}"
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
    for study, group in trials.groupby("tags.study"):
        metric_cols = [c for c in group.columns if c.startswith("metrics.") and group[c].notna().any()]
        if not metric_cols:
            continue
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(5, 3.5))
        numbers = group["tags.trial"].astype(int)
        ax.plot(numbers, group[metric_cols[0]], "o", label="trial")
        ax.set_xlabel("trial")
        ax.set_ylabel(metric_cols[0][len("metrics."):])
        ax.set_title(study, fontsize=8)
        written += _save(fig, folder, f"study_{study}")
    return written


def importance_plot(storage: str, folder: Path) -> list[Path]:
    """Parameter importances (fANOVA) of every single-objective study in an Optuna storage."""
    import optuna

    from studies.runner import make_storage

    written = []
    backend = make_storage(storage)
    for summary in optuna.get_all_study_summaries(backend):
        study = optuna.load_study(study_name=summary.study_name, storage=backend)
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        if len(study.directions) != 1 or len(complete) < 2 or not complete[0].params:
            continue
        importances = optuna.importance.get_param_importances(study)
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(4, 2.5))
        ax.barh(list(importances), list(importances.values()))
        ax.set_xlabel("importance (fANOVA)")
        ax.set_title(summary.study_name, fontsize=8)
        written += _save(fig, folder, f"importance_{summary.study_name}")
    return written


def make_plots(store: Store, folder: Path, storage: str | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = pareto_plots(store, folder) + memory_vs_length(store, folder) + training_curves(store, folder)
    written += study_history(store, folder)
    if storage:
        written += importance_plot(storage, folder)
    return written
