"""The batch x length frontier as a plot: the largest batch predicted to fit, per card, against the length."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt


def plot_frontier(rows: list[dict], title: str, path: Path) -> Path:
    """One line per card (max batch vs seconds per utterance), written to `path` (its suffix picks the format)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    seconds = [row["seconds"] for row in rows]
    for column in [c for c in rows[0] if c.startswith("pred_max_batch_")]:
        ax.plot(seconds, [row[column] for row in rows], "o-", label=f"card {column[len('pred_max_batch_'):]}")
    ax.set_xlabel("seconds per utterance")
    ax.set_ylabel("largest batch predicted to fit")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
