"""The paper's tables from MLflow: main comparison, ablation, claimed vs measured, literature, studies."""

import math
import tempfile
from dataclasses import dataclass

import pandas as pd

from reports.collect import QUALITY, Store, latest_profiles, noisy_quality, quality_by_variant
from variants.registry import CHANGES

ORDER = ("original", "optimized", "optimized_a", "optimized_design", "bsrnn", "original_seed", "optimized_seed")
LABELS = {"pesq_wb": "PESQ", "csig": "CSIG", "cbak": "CBAK", "covl": "COVL", "ssnr": "SSNR", "stoi": "STOI"}


@dataclass
class Table:
    """A rendered-ready table: caption, header, rows of strings, the command that reproduces it."""

    name: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    command: str
    note: str = ""


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
        row = [name] + [cell(p[k], digits=d) if p is not None else "-" for k, d in
                        (("params_m", 3), ("macs_g_per_s", 2), ("peak_mem_train_mib", 0), ("max_batch_train", 0),
                         ("rtf_infer", 3))]
        row += [cell(q[k], q[f"{k}_ci"]) if q is not None else "-" for k in QUALITY]
        row.append(cell(pcs.loc[name]["pesq_wb"], pcs.loc[name]["pesq_wb_ci"]) if q is not None else "-")
        rows.append(row)
    return Table("main", _main_caption(store, profiles, quality), header, rows,
                 "python -m bench profile --all --batch 6 --seconds 2 && python -m bench run --variant NAME "
                 "--seeds 0,1,2 && python -m reports tables")


def _main_caption(store: Store, profiles: pd.DataFrame, quality: pd.DataFrame) -> str:
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
    from bench.tracking import download_artifact

    runs = store.runs[store.runs["tags.variant"] == variant].sort_values("tags.seed")
    if runs.empty:
        return None
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = download_artifact(store.uri, runs["run_id"].iloc[0], "per_utterance.csv", folder)
            return pd.read_csv(path).set_index("id")
        except Exception:  # a run without the artifact (failed training): no paired test
            return None


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
    sign = "+" if base == "original" else "-"
    names = [f"{base}{sign}{c}" for c in CHANGES]
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
    return Table(f"ablation_{base}", f"Single changes {'added to' if sign == '+' else 'taken from'} {base}: "
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


LITERATURE = [
    ("noisy input", "1.97", "3.35", "2.44", "2.63", "1.68", "0.91"),
    ("CMGAN", "3.41", "-", "-", "-", "-", "-"),
    ("CGA-MGAN", "3.47", "-", "-", "-", "-", "-"),
    ("SEMamba", "3.55", "-", "-", "-", "-", "-"),
    ("SEMamba + PCS", "3.69", "-", "-", "-", "-", "-"),
    ("MP-SENet", "3.60", "-", "-", "-", "-", "-"),
    ("MP-SENet checkpoint, rescored", "3.50", "4.73", "3.95", "4.22", "10.64", "0.96"),
    ("Mamba-SEUNet", "3.73", "-", "-", "-", "-", "-"),
]


def literature_table() -> Table:
    header = ["System (quoted)"] + [LABELS[q] for q in QUALITY]
    return Table("literature", "Quoted from the literature on VoiceBank+DEMAND (not measured here; kept apart from "
                 "measured rows).", header, [list(row) for row in LITERATURE], "python -m reports tables")


def study_table(store: Store) -> Table | None:
    trials = store.trials
    if trials.empty:
        return None
    rows = []
    for study, group in trials.groupby("tags.study"):
        ok = group[group["tags.status"] == "ok"]
        metric_cols = [c for c in group.columns if c.startswith("metrics.")]
        best = ""
        if not ok.empty and metric_cols:
            key = metric_cols[0]
            chosen = ok.loc[ok[key].idxmax() if "pesq" in key else ok[key].idxmin()]
            knobs = {c[len("params.knob_"):]: chosen[c] for c in group.columns if c.startswith("params.knob_")}
            best = f"{key[len('metrics.'):]} {chosen[key]:.4g} at " + ", ".join(f"{k}={v}" for k, v in knobs.items())
        rows.append([study, str(len(group)), str(len(group) - len(ok)), best or "-"])
    caption = "Optuna studies: trials logged to MLflow, failed ones (OOM, NaN) counted, best trial."
    return Table("studies", caption, ["Study", "Trials", "Failed", "Best"], rows,
                 "python -m studies search ... && python -m reports tables")


def all_tables(store: Store) -> list[Table]:
    tables = [main_table(store)]
    tables += [t for t in (ablation_table(store, "original"), ablation_table(store, "optimized")) if t]
    tables += [claims_table(store), literature_table()]
    return tables + [t for t in (study_table(store),) if t]
