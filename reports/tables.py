"""The paper's tables from MLflow: main comparison, ablation, claimed vs measured, literature, studies."""

import math
import tempfile
from dataclasses import dataclass, replace

import pandas as pd

from bench.tracking.schema import METRIC_LABELS as LABELS
from bench.tracking.schema import PAPER_METRICS as QUALITY
from reports.collect import (
    CONFIG_FIGURES,
    Store,
    latest_profiles,
    noisy_quality,
    pareto_mask,
    quality_by_variant,
    study_objective,
)
from variants.errors import MbsbenchError
from variants.registry import BASES, single_change_names

ORDER = tuple(BASES)


@dataclass
class Table:
    """A rendered-ready table: caption, header, rows of strings, the command that reproduces it."""

    name: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    command: str


def cell(value: float, ci: float = math.nan, digits: int = 2) -> str:
    """'3.12 +- 0.05', '3.12', or '-' for a missing value (never 0)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.{digits}f}"
    return f"{text} +- {ci:.{digits}f}" if ci == ci else text


def _ordered(names) -> list[str]:
    names = list(dict.fromkeys(names))
    return [n for n in ORDER if n in names] + sorted(n for n in names if n not in ORDER)


def main_table(store: Store) -> Table:
    profiles, quality, pcs = latest_profiles(store), quality_by_variant(store), quality_by_variant(store, pcs=True)
    header = ["Variant", "Params (M)", "MACs (G/s)", "Peak train (MiB)", "Max batch", "RTF"]
    header += [LABELS[q] for q in QUALITY] + ["PESQ+PCS"]
    rows = []
    noisy = noisy_quality(store)
    if noisy:
        rows.append(["noisy input", "-", "-", "-", "-", "-"] + [cell(noisy[q]) for q in QUALITY] + ["-"])
    for name in _ordered(list(profiles.index) + list(quality.index)):
        p = profiles.loc[name] if name in profiles.index else None
        q = quality.loc[name] if name in quality.index else None
        row = [name] + [cell(_figure(p, q, k), digits=d) for k, d in
                        (("params_m", 3), ("macs_g_per_s", 2), ("peak_mem_train_mib", 0), ("max_batch_train", 0),
                         ("rtf_infer", 3))]
        row += [cell(q[k], q[f"{k}_ci"]) if q is not None else "-" for k in QUALITY]
        row.append(cell(pcs.loc[name]["pesq_wb"], pcs.loc[name]["pesq_wb_ci"]) if q is not None else "-")
        rows.append(row)
    return Table("main", _main_caption(profiles, quality), header, rows,
                 "python -m bench profile --all --batch 6 --seconds 2 && python -m bench run --variant NAME "
                 "--seeds 0,1,2 && python -m reports tables")


def _figure(profile: pd.Series | None, quality: pd.Series | None, key: str) -> float:
    """A profile's figure; one that depends on the config alone also from a trained run when never profiled."""
    if profile is not None and profile[key] == profile[key]:
        return profile[key]
    if key in CONFIG_FIGURES and quality is not None:
        return quality[key]
    return math.nan


def _main_caption(profiles: pd.DataFrame, quality: pd.DataFrame) -> str:
    parts = ["Measured by mbsbench."]
    if not profiles.empty:
        first = profiles.iloc[0]
        parts.append(f"Profile: batch {first['run_batch']}, {first['run_seconds']} s per utterance, "
                     f"{first['run_device']}; peak training memory is one step (forward, loss, backward, Adam) in "
                     f"MiB; max batch within {first['run_budget_gb']} GiB; RTF = inference seconds per second of "
                     "audio; MACs per second of audio.")
    if not quality.empty:
        parts.append(f"Quality on the test split of {quality['data'].iloc[0]} (full utterances), mean +- 95% CI "
                     "over seeds where there are several; '-' means not measured.")
    return " ".join(parts)


def _per_utterance(store: Store, variant: str) -> pd.DataFrame | None:
    """The per-utterance scores of a variant's first seed (downloaded from its run)."""
    from bench.tracking.store import download_artifact

    runs = store.runs[store.runs["tags.variant"] == variant].sort_values("tags.seed")
    if runs.empty:
        return None
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = download_artifact(store.uri, runs["run_id"].iloc[0], "per_utterance.csv", folder)
        except MbsbenchError:  # a run without the artifact (training failed before a checkpoint): no paired test
            return None
        return pd.read_csv(path).set_index("id")


def paired_test(base: pd.DataFrame | None, other: pd.DataFrame | None, name: str) -> tuple[float, float]:
    """Mean difference (other - base) over common utterances and the Wilcoxon signed-rank p-value."""
    from scipy.stats import wilcoxon

    if base is None or other is None or name not in base or name not in other:
        return math.nan, math.nan
    both = pd.concat([base[name], other[name]], axis=1, keys=["a", "b"]).dropna()
    diff = both["b"] - both["a"]
    if len(diff) < 2 or (diff == 0).all():
        return float(diff.mean()) if len(diff) else math.nan, math.nan
    return float(diff.mean()), float(wilcoxon(both["b"], both["a"]).pvalue)


def ablation_table(store: Store, base: str) -> Table | None:
    """Each single change against its base: differences, '*' where the paired test gives p < 0.05."""
    profiles, quality = latest_profiles(store), quality_by_variant(store)
    names = single_change_names(base)
    present = [n for n in names if n in profiles.index or n in quality.index]
    if not present or (base not in profiles.index and base not in quality.index):
        return None
    base_utts = _per_utterance(store, base)
    header = ["Change", "d Params (M)", "d Peak train (MiB)"] + [f"d {LABELS[q]}" for q in QUALITY]
    rows = []
    for name in present:
        row = [name[len(base):]]
        for key, digits in (("params_m", 3), ("peak_mem_train_mib", 0)):
            ok = name in profiles.index and base in profiles.index
            row.append(cell(profiles.loc[name][key] - profiles.loc[base][key], digits=digits) if ok else "-")
        utts = _per_utterance(store, name)
        for q in QUALITY:
            diff, p = paired_test(base_utts, utts, q)
            row.append(cell(diff) + ("*" if p == p and p < 0.05 else ""))
        rows.append(row)
    return Table(f"ablation_{base}", f"Single changes {'added to' if base == 'original' else 'taken from'} {base}: "
                 "differences to the base (change minus base). Quality: mean over the test utterances of the first "
                 "seed; * marks p < 0.05 in a Wilcoxon signed-rank test over utterances.", header, rows,
                 f"python -m bench ablate --base {base} && python -m reports tables")


def _value(frame: pd.DataFrame, variant: str, key: str) -> float:
    return float(frame.loc[variant][key]) if variant in frame.index and key in frame.columns else math.nan


def claims_table(store: Store) -> Table:
    """Every claim of MODELS.md beside the number measured here ('-' where not measured yet)."""
    prof, qual = latest_profiles(store), quality_by_variant(store)

    def q(variant: str, key: str = "pesq_wb") -> str:
        return cell(_value(qual, variant, key), _value(qual, variant, f"{key}_ci"))

    ratio = _value(prof, "original", "peak_mem_train_mib") / _value(prof, "original+chunked_scan", "peak_mem_train_mib")
    nan_runs = store.runs[(store.runs.get("tags.variant") == "optimized_a")] if not store.runs.empty else store.runs
    nan_status = ", ".join(sorted(set(nan_runs.get("tags.status", pd.Series(dtype=str)).astype(str)))) or "-"
    rows = [
        ["original parameters", "author (measured)", "7.33M", cell(_value(prof, "original", "params_m"), digits=3)],
        ["original out of memory at batch 2 (12 GB GPU)", "author (measured)", "max batch < 2",
         cell(_value(prof, "original", "max_batch_train"), digits=0)],
        ["optimized parameters", "proposal", "2.3M", cell(_value(prof, "optimized", "params_m"), digits=3)],
        ["chunked scan: 33x less memory", "proposal", "33x", cell(ratio) + ("x" if ratio == ratio else "")],
        ["optimized: ~4 GB at batch 6-8", "proposal", "~4 GB",
         cell(_value(prof, "optimized", "peak_mem_train_mib") / 1024, digits=2) + " GiB"],
        ["optimized: batch 6-8 fits", "proposal", "6-8", cell(_value(prof, "optimized", "max_batch_train"), digits=0)],
        ["optimized PESQ (expected, never measured)", "proposal", "3.50-3.65", q("optimized")],
        ["BSRNN(64,5) PESQ", "repository README", "3.10", q("bsrnn")],
        ["BSRNN(64,5) SSNR", "repository README", "9.56", q("bsrnn", "ssnr")],
        ["BSRNN(64,5) STOI", "repository README", "0.95", q("bsrnn", "stoi")],
        ["BSRNN PESQ at epoch 12 (2 s test crops)", "server logs", "3.00", q("bsrnn")],
        ["optimized PESQ at epoch 19 (2 s test crops)", "server logs", "2.62", q("optimized")],
        ["optimized_a: NaN from epoch 2", "server logs", "NaN", nan_status],
    ]
    caption = ("Claims of the reference next to mbsbench's measurements. Memory and max batch under the profile "
               "conditions of the main table; quality on the data of the main table (full utterances, checkpoint "
               "chosen on validation), which is not VoiceBank+DEMAND unless the runs say so.")
    return Table("claims", caption, ["Claim", "Source", "Claimed", "Measured"], rows,
                 "python -m bench profile --all --batch 6 --seconds 2 && python -m bench run ... && "
                 "python -m reports tables")


# quoted, never measured here; each row keyed by metric name (a metric missing from a row is '-')
LITERATURE: list[tuple[str, dict[str, str]]] = [
    ("noisy input", {"pesq_wb": "1.97", "csig": "3.35", "cbak": "2.44", "covl": "2.63", "ssnr": "1.68",
                     "stoi": "0.91"}),
    ("CMGAN", {"pesq_wb": "3.41"}),
    ("CGA-MGAN", {"pesq_wb": "3.47"}),
    ("SEMamba", {"pesq_wb": "3.55"}),
    ("SEMamba + PCS", {"pesq_wb": "3.69"}),
    ("MP-SENet", {"pesq_wb": "3.60"}),
    ("MP-SENet checkpoint, rescored", {"pesq_wb": "3.50", "csig": "4.73", "cbak": "3.95", "covl": "4.22",
                                       "ssnr": "10.64", "stoi": "0.96"}),
    ("Mamba-SEUNet", {"pesq_wb": "3.73"}),
]


def literature_table() -> Table:
    header = ["System (quoted)"] + [LABELS[q] for q in QUALITY]
    rows = [[system] + [values.get(q, "-") for q in QUALITY] for system, values in LITERATURE]
    return Table("literature", "Quoted from the literature on VoiceBank+DEMAND (not measured here; kept apart from "
                 "measured rows).", header, rows, "python -m reports tables")


def _knobs(trial: pd.Series) -> str:
    return ", ".join(f"{c[len('params.knob_'):]}={trial[c]}" for c in trial.index
                     if c.startswith("params.knob_") and trial[c] == trial[c])


def _best(ok: pd.DataFrame, metrics: list[str], directions: list[str]) -> str:
    """The best trial (one objective) or the Pareto front (several), each figure named."""
    columns = [f"metrics.{m}" for m in metrics]
    ok = ok.dropna(subset=[c for c in columns if c in ok])
    if ok.empty or any(c not in ok for c in columns):
        return "-"
    if len(metrics) == 1:
        chosen = ok.loc[ok[columns[0]].idxmax() if directions[0] == "maximize" else ok[columns[0]].idxmin()]
        return f"{metrics[0]} {chosen[columns[0]]:.4g} at {_knobs(chosen)}"
    front = ok[pareto_mask(ok[columns].to_numpy(), directions)]
    return f"Pareto front of {len(front)}: " + "; ".join(
        " ".join(f"{m} {t[c]:.4g}" for m, c in zip(metrics, columns)) + f" at {_knobs(t)}"
        for _, t in front.iterrows())


def study_table(store: Store) -> Table | None:
    """One row per study: trials, failed trials, and the best by the study's own objective and direction."""
    trials = store.trials
    if trials.empty:
        return None
    rows = []
    for study, group in trials.groupby("tags.study"):
        objective = study_objective(store, study)
        ok = group[group["tags.status"] == "ok"]
        best = _best(ok, *objective) if objective else "- (the study's run recorded no objective)"
        rows.append([study, str(len(group)), str(len(group) - len(ok)), best])
    caption = ("Optuna studies: trials logged to MLflow, failed ones (OOM, NaN) counted, the best trial by the "
               "study's objective (the Pareto front when it has several).")
    return Table("studies", caption, ["Study", "Trials", "Failed", "Best"], rows,
                 "python -m studies search ... && python -m reports tables")


def device_tables(store: Store) -> list[Table]:
    """The tables whose numbers depend on the device (the store holds one)."""
    tables = [main_table(store)]
    tables += [t for t in (ablation_table(store, "original"), ablation_table(store, "optimized")) if t]
    return [*tables, claims_table(store)]


def all_tables(store: Store, device: str = "") -> list[Table]:
    """Every table; profiles of several devices are never mixed: one set of tables per device, each caption
    naming it (`device` keeps only the devices whose name contains it)."""
    if device:
        everything, store = store, store.on(device)
        if store.profiles.empty and store.runs.empty:
            from variants.errors import MbsbenchError

            raise MbsbenchError(f"--device {device!r}: no profile or run in {store.uri} was measured on such a "
                                f"device; devices there: {', '.join(everything.devices()) or 'none'}")
    devices = store.devices()
    if len(devices) <= 1:
        tables = device_tables(store)
    else:
        tables = []
        for index, name in enumerate(devices, 1):
            for table in device_tables(store.on(name)):
                tables.append(replace(table, name=f"{table.name}_device{index}",
                                      caption=f"[{name}] {table.caption}"))
    tables.append(literature_table())
    return tables + [t for t in (study_table(store),) if t]
