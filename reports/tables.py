"""The paper's tables from MLflow: main comparison, ablation, claimed vs measured, literature, studies."""

import math
import shlex
import tempfile
from dataclasses import dataclass, replace

import pandas as pd
from scipy.stats import wilcoxon

from bench.text import scorer_line
from bench.tracking.schema import DNSMOS_METRICS
from bench.tracking.schema import METRIC_LABELS as LABELS
from bench.tracking.schema import PAPER_METRICS as QUALITY
from bench.tracking.store import ArtifactMissingError, download_artifact
from reports.collect import (
    CONFIG_FIGURES,
    Store,
    latest_profiles,
    newest_profile_runs,
    noisy_quality,
    pareto_mask,
    quality_by_variant,
    run_commands,
    scorers_of,
    study_objective,
)
from variants.errors import MbsbenchError
from variants.registry import BASES, single_change_names

ORDER = tuple(BASES)
REPORTS_COMMAND = "python -m reports tables"


@dataclass
class Table:
    """A rendered-ready table: caption, header, rows of strings, the command that reproduces it (built from
    the runs behind the rows; `unrecorded` of them were logged without one)."""

    name: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    command: str = REPORTS_COMMAND
    unrecorded: int = 0


def reproduce_from(runs: pd.DataFrame) -> dict:
    """Table fields: the commands that made `runs`, oldest first, then the reports command."""
    commands, unrecorded = run_commands(runs)
    return {"command": " && ".join([*commands, REPORTS_COMMAND]), "unrecorded": unrecorded}


def reproduce(store: Store, variants: list[str] | None = None) -> dict:
    """Table fields from the runs behind rows of `variants` (all when None): the newest profile of each, and
    every trained run (each seed, and the noisy input's scores)."""
    frames = [f for f in (newest_profile_runs(store), store.runs) if not f.empty]
    if variants is not None:
        frames = [f[f["variant"].isin(variants)] for f in frames]
    return reproduce_from(pd.concat(frames) if frames else pd.DataFrame())


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
    predicted = PREDICTED if _any_predicted(profiles) else ()
    scores = QUALITY + tuple(m for m in DNSMOS_METRICS if m in quality and quality[m].notna().any())
    header = ["Variant", "Params (M)", "MACs (G/s)", "Peak train (MiB)", "Max batch", "RTF"]
    header += [title for _, title in predicted] + [LABELS[q] for q in scores] + ["PESQ+PCS"]
    rows = []
    noisy = noisy_quality(store)
    if noisy:
        rows.append(["noisy input", *["-"] * (5 + len(predicted))] + [cell(noisy[q]) for q in scores] + ["-"])
    for name in _ordered(list(profiles.index) + list(quality.index)):
        p = profiles.loc[name] if name in profiles.index else None
        q = quality.loc[name] if name in quality.index else None
        row = [name] + [cell(_figure(p, q, k), digits=d) for k, d in
                        (("params_m", 3), ("macs_g_per_s", 2), ("peak_mem_train_mib", 0), ("max_batch_train", 0),
                         ("rtf_infer", 3))]
        row += [cell(p[key] if p is not None and key in p else math.nan, digits=0) for key, _ in predicted]
        row += [cell(q[k], q[f"{k}_ci"]) if q is not None else "-" for k in scores]
        row.append(cell(pcs.loc[name]["pesq_wb"], pcs.loc[name]["pesq_wb_ci"]) if q is not None else "-")
        rows.append(row)
    scorers = scorers_of(store.runs) if not store.runs.empty else {}
    caption = _main_caption(profiles, quality, scorers) + (" Pred.: predicted by bench plan for a CUDA card of the "
                                                           "profile's budget (allocator model, Triton scan; no GPU "
                                                           "ran)." if predicted else "")
    return Table("main", caption, header, rows, **reproduce(store))


# bench profile --predict's columns, shown when some profile has them
PREDICTED = (("pred_cuda_peak_reserved_mib", "Pred. CUDA reserved (MiB)"), ("pred_max_batch_cuda", "Pred. max batch"))


def _any_predicted(profiles: pd.DataFrame) -> bool:
    columns = [column for column, _ in PREDICTED if column in profiles]
    return bool(columns) and bool(profiles[columns].notna().any().any())


def _figure(profile: pd.Series | None, quality: pd.Series | None, key: str) -> float:
    """A profile's figure; one that depends on the config alone also from a trained run when never profiled."""
    if profile is not None and profile[key] == profile[key]:
        return profile[key]
    if key in CONFIG_FIGURES and quality is not None:
        return quality[key]
    return math.nan


def _main_caption(profiles: pd.DataFrame, quality: pd.DataFrame, scorers: dict[str, str]) -> str:
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
    if scorers:
        parts.append(scorer_line(scorers).replace("scored by", "Scored by", 1) + ".")
    return " ".join(parts)


def _per_utterance(store: Store, variant: str) -> pd.DataFrame | None:
    """The per-utterance scores of a variant's first seed (downloaded from its run)."""
    runs = store.runs[store.runs["variant"] == variant].sort_values("seed")
    if runs.empty:
        return None
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = download_artifact(store.uri, runs["run_id"].iloc[0], "per_utterance.csv", folder)
        except ArtifactMissingError:  # a run without it (training failed before a checkpoint): no paired test
            return None
        return pd.read_csv(path).set_index("id")


def paired_test(base: pd.DataFrame | None, other: pd.DataFrame | None, name: str) -> tuple[float, float]:
    """Mean difference (other - base) over common utterances and the Wilcoxon signed-rank p-value."""
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
    figures = [("params_m", 3, 1), ("peak_mem_train_mib", 0, 1), ("train_step_s", 1, 1000)]
    header = ["Change", "d Params (M)", "d Peak train (MiB)", "d Train step (ms)"]
    compiled = _compiled_mode(profiles)
    if compiled:  # eager and compiled side by side
        figures.append(("compiled_train_step_s", 1, 1000))
        header.append("d Train step compiled (ms)")
    header += [f"d {LABELS[q]}" for q in QUALITY]
    rows = []
    for name in present:
        row = [name[len(base):]]
        for key, digits, scale in figures:
            ok = name in profiles.index and base in profiles.index
            row.append(cell(scale * (profiles.loc[name][key] - profiles.loc[base][key]), digits=digits) if ok else "-")
        utts = _per_utterance(store, name)
        for q in QUALITY:
            diff, p = paired_test(base_utts, utts, q)
            row.append(cell(diff) + ("*" if p == p and p < 0.05 else ""))
        rows.append(row)
    return Table(f"ablation_{base}", f"Single changes {'added to' if base == 'original' else 'taken from'} {base}: "
                 "differences to the base (change minus base). Quality: mean over the test utterances of the first "
                 "seed; * marks p < 0.05 in a Wilcoxon signed-rank test over utterances. Train step: the median "
                 "step time of each profile" + (f", eager and under torch.compile (mode {compiled}; its compile "
                                                "time apart, not in the step)" if compiled else "") + ".",
                 header, rows, **reproduce(store, [base, *present]))


def _compiled_mode(profiles: pd.DataFrame) -> str:
    """The torch.compile mode of the profiles that timed compiled steps ('' for none; modes joined if several)."""
    if profiles.empty or profiles["compiled_train_step_s"].isna().all():
        return ""
    modes = profiles.loc[profiles["compiled_train_step_s"].notna(), "run_compiled"].dropna()
    return ", ".join(sorted({str(mode) for mode in modes if mode})) or "default"


def _value(frame: pd.DataFrame, variant: str, key: str) -> float:
    return float(frame.loc[variant][key]) if variant in frame.index and key in frame.columns else math.nan


@dataclass(frozen=True)
class Conditions:
    """What a claim about memory was measured under: a GPU or not, a batch range, seconds per utterance."""

    gpu: bool = False
    batches: tuple[int, int] | None = None
    seconds: float | None = None


def _profile_conditions(prof: pd.DataFrame, variant: str) -> str:
    if variant not in prof.index:
        return "not profiled"
    p = prof.loc[variant]
    method = p.get("run_max_batch_method", "") or ""
    return f"batch {p['run_batch']}, {p['run_seconds']} s, {p['run_device']}" + (f", max batch {method}" if method
                                                                                 else "")


def _profile_matches(prof: pd.DataFrame, variant: str, wanted: Conditions) -> bool:
    """Whether the variant's profile was measured under the claim's conditions (a GPU, its batches, its length)."""
    if variant not in prof.index:
        return False
    p = prof.loc[variant]
    gpu = not str(p["run_device"]).startswith("CPU")
    batch, seconds = int(float(p["run_batch"])), float(p["run_seconds"])
    return (gpu or not wanted.gpu) and (wanted.batches is None or wanted.batches[0] <= batch <= wanted.batches[1]) \
        and (wanted.seconds is None or seconds == wanted.seconds)


def _quality_conditions(qual: pd.DataFrame, variant: str) -> str:
    if variant not in qual.index:
        return "not trained"
    q = qual.loc[variant]
    return f"{q['data']}, {q['train_steps']:.0f} steps ({q['train_epochs']:.2f} epochs), full test utterances"


CLAIMED_VARIANTS = ("original", "original+chunked_scan", "optimized", "optimized_a", "bsrnn")


def claims_table(store: Store) -> Table:
    """Every claim of MODELS.md beside the number measured here, each side with its conditions: a measurement made
    under other conditions than the claim's is '-' in the Measured column, its figure only in the conditions."""
    prof, qual = latest_profiles(store), quality_by_variant(store)
    gpu_2s = Conditions(gpu=True, seconds=2.0)

    def measured(variant: str, key: str, digits: int, wanted: Conditions, unit: str = "", scale: float = 1.0):
        value = _value(prof, variant, key) / scale
        text = cell(value, digits=digits) + (unit if value == value else "")
        if value == value and not _profile_matches(prof, variant, wanted):
            return "-", f"{text} at {_profile_conditions(prof, variant)}: not the claim's conditions"
        return text, _profile_conditions(prof, variant)

    def quality(variant: str, key: str = "pesq_wb"):
        text = cell(_value(qual, variant, key), _value(qual, variant, f"{key}_ci"))
        if variant in qual.index and not str(qual.loc[variant]["data"]).startswith("vbd"):
            return "-", f"{text} on {_quality_conditions(qual, variant)}: not VoiceBank+DEMAND"
        return text, _quality_conditions(qual, variant)

    def predicted(variant: str, key: str, wanted: Conditions, unit: str = "", scale: float = 1.0):
        """bench plan's prediction for a CUDA card of the claim's budget (profiles made with --predict)."""
        value = _value(prof, variant, key) / scale
        if value != value:
            return "-", "not predicted (bench profile --predict)"
        p = prof.loc[variant]
        text = cell(value, digits=0 if not unit else 2) + unit
        where = (f"predicted by bench plan (allocator model, Triton scan) at batch {p['run_batch']}, "
                 f"{p['run_seconds']} s, a {p['run_budget_gb']} GiB card")
        ok = _profile_matches(prof, variant, replace(wanted, gpu=False)) and float(p["run_budget_gb"]) == 12
        return (text, where) if ok else ("-", f"{text} {where}: not the claim's conditions")

    def params(variant: str) -> tuple[str, str]:  # the same on any machine: no condition to match
        p = prof.loc[variant] if variant in prof.index else None
        value = _figure(p, qual.loc[variant] if variant in qual.index else None, "params_m")
        return (f"{value:.3f}M", "counted from the config") if value == value else ("-", "not profiled or trained")

    ratio = _value(prof, "original", "peak_mem_train_mib") / _value(prof, "original+chunked_scan", "peak_mem_train_mib")
    same = _profile_conditions(prof, "original") == _profile_conditions(prof, "original+chunked_scan")
    ratio_cells = (cell(ratio) + "x", f"{_profile_conditions(prof, 'original')}, both") if ratio == ratio and same \
        else ("-", "needs original and original+chunked_scan profiled under the same conditions")
    nan_runs = store.runs[(store.runs.get("variant") == "optimized_a")] if not store.runs.empty else store.runs
    nan_status = ", ".join(sorted(set(nan_runs.get("status", pd.Series(dtype=str)).astype(str)))) or "-"
    claims = [
        ("original parameters", "author (measured)", "7.33M", params("original")),
        ("original out of memory at batch 2", "author (measured), 12 GB GPU, 2 s crops", "max batch < 2",
         measured("original", "max_batch_train", 0, gpu_2s)),
        ("original out of memory at batch 2 (predicted)", "author (measured), 12 GB GPU, 2 s crops",
         "max batch < 2", predicted("original", "pred_max_batch_cuda", Conditions(seconds=2.0))),
        ("optimized parameters", "proposal", "2.3M", params("optimized")),
        ("chunked scan: 33x less memory", "proposal, training", "33x", ratio_cells),
        ("optimized: ~4 GB at batch 6-8", "proposal, GPU, 2 s crops", "~4 GiB",
         measured("optimized", "peak_mem_train_mib", 2, Conditions(True, (6, 8), 2.0), " GiB", 1024)),
        ("optimized: ~4 GB at batch 6-8 (predicted)", "proposal, GPU, 2 s crops", "~4 GiB",
         predicted("optimized", "pred_cuda_peak_reserved_mib", Conditions(False, (6, 8), 2.0), " GiB", 1024)),
        ("optimized: batch 6-8 fits", "proposal, 12 GB GPU, 2 s crops", "6-8",
         measured("optimized", "max_batch_train", 0, gpu_2s)),
        ("optimized PESQ (expected, never measured)", "proposal, VoiceBank+DEMAND", "3.50-3.65", quality("optimized")),
        ("BSRNN(64,5) PESQ", "repository README, VoiceBank+DEMAND", "3.10", quality("bsrnn")),
        ("BSRNN(64,5) SSNR", "repository README, VoiceBank+DEMAND", "9.56", quality("bsrnn", "ssnr")),
        ("BSRNN(64,5) STOI", "repository README, VoiceBank+DEMAND", "0.95", quality("bsrnn", "stoi")),
        ("BSRNN PESQ at epoch 12", "server logs, VoiceBank+DEMAND, 2 s test crops", "3.00", quality("bsrnn")),
        ("optimized PESQ at epoch 19", "server logs, VoiceBank+DEMAND, 2 s test crops", "2.62", quality("optimized")),
        ("optimized_a: NaN from epoch 2", "server logs, VoiceBank+DEMAND", "NaN", (nan_status, "run status")),
    ]
    rows = [[claim, source, claimed, *cells] for claim, source, claimed, cells in claims]
    caption = ("Claims of the reference next to mbsbench's measurements, each with the conditions it was made "
               "under. A measurement made under other conditions than the claim's (a CPU for a GPU claim, another "
               "batch or length, data other than VoiceBank+DEMAND) is '-', its figure kept in 'Measured under'. "
               "Max batch is 'measured' (bisection on real OOMs) or 'predicted' (from CPU peaks).")
    return Table("claims", caption, ["Claim", "Source and conditions", "Claimed", "Measured", "Measured under"],
                 rows, **reproduce(store, list(CLAIMED_VARIANTS)))


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
                 "measured rows).", header, rows)


def _knobs(trial: pd.Series) -> str:
    return ", ".join(f"{c[len('knob_'):]}={trial[c]}" for c in trial.index
                     if c.startswith("knob_") and trial[c] == trial[c])


def _best(ok: pd.DataFrame, metrics: list[str], directions: list[str]) -> str:
    """The best trial (one objective) or the Pareto front (several), each figure named."""
    columns = list(metrics)
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
    for study, group in trials.groupby("study"):
        objective = study_objective(store, study)
        ok = group[group["status"] == "ok"]
        best = _best(ok, *objective) if objective else "- (the study's run recorded no objective)"
        rows.append([study, str(len(group)), str(len(group) - len(ok)), best])
    caption = ("Optuna studies: trials logged to MLflow, failed ones (OOM, NaN) counted, the best trial by the "
               "study's objective (the Pareto front when it has several).")
    return Table("studies", caption, ["Study", "Trials", "Failed", "Best"], rows, **reproduce_from(store.studies))


def device_tables(store: Store) -> list[Table]:
    """The tables whose numbers depend on the device (the store holds one)."""
    tables = [main_table(store)]
    tables += [t for t in (ablation_table(store, "original"), ablation_table(store, "optimized")) if t]
    return [*tables, claims_table(store), *[t for t in (deployment_table(store),) if t]]


DEPLOYMENT = [("Latency (ms)", "latency_ms", ".2f"), ("Hop (ms)", "hop_ms", ".0f"),
              ("Compute/hop median (ms)", "hop_compute_median_ms", ".2f"), ("p99 (ms)", "hop_compute_p99_ms", ".2f"),
              ("max (ms)", "hop_compute_max_ms", ".2f"), ("RTF", "rtf", ".3f"), ("State (KiB)", "state_kib", ".0f")]


def deployment_table(store: Store) -> Table | None:
    """The newest `bench stream` of each variant: latency, compute per hop, RTF, state, the DNS rule."""
    if store.streams.empty:
        return None
    newest = store.streams.sort_values("start_time").groupby("variant").tail(1)
    rows = [[run["variant"], *[format(float(run[key]), spec) for _, key, spec in DEPLOYMENT],
             run["dns_rule"], f"{int(float(run['threads']))}", run["timing"]] for _, run in newest.iterrows()]
    caption = ("Streaming: each causal variant stepped one hop at a time (batch 1, `bench stream`); latency "
               "measured by an impulse probe; DNS rule: latency <= 40 ms and every hop computed within the hop. "
               "Timing 'busy' marks a run measured while other processes used the CPU.")
    return Table("deployment", caption, ["Variant", *[h for h, _, _ in DEPLOYMENT], "DNS rule", "Threads", "Timing"],
                 rows, **reproduce_from(newest))


def all_tables(store: Store, device: str = "") -> list[Table]:
    """Every table; profiles of several devices are never mixed: one set of tables per device, each caption
    naming it (`device` keeps only the devices whose name contains it)."""
    if device:
        everything, store = store, store.on(device)
        if store.profiles.empty and store.runs.empty and store.streams.empty:
            raise MbsbenchError(f"--device {device!r}: no profile, run or stream in {store.uri} was measured on such a "
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
    if device:  # the same tables again need the same filter
        tables = [replace(t, command=t.command.replace(REPORTS_COMMAND, shlex.join([*REPORTS_COMMAND.split(),
                                                                                     "--device", device])))
                  for t in tables]
    tables.append(literature_table())
    return tables + [t for t in (study_table(store),) if t]
