"""Every record_* function: what each task writes to MLflow, under the names of bench/tracking/schema.py."""

import json
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from bench.tracking.schema import EXPERIMENTS, PROFILE_CONDITIONS, PROFILE_FIGURES
from bench.tracking.store import Run, provenance_tags, start_run

MIB = 2**20


def summary_means(evaluation, prefix: str = "") -> dict[str, float]:
    """{prefix + metric: mean, ..._ci95: half-width, ..._n: n scored} of an Evaluation's summary (or {})."""
    if evaluation is None:
        return {}
    out = {}
    for row in evaluation.summary.to_dict("records"):
        name = prefix + row["metric"]
        out |= {name: row["mean"], f"{name}_ci95": row["ci95"], f"{name}_n": row["n_scored"]}
    return out


def _finite(metrics: Mapping[str, object]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and v == v}


def record_profile(result: dict, config: dict, uri: str, table_text: str = "") -> str:
    """Log one profile (experiment 'profile'); returns the run id."""
    tags = provenance_tags(result["device"]) | {"task": "profile", "variant": result["variant"]}
    tags |= {"status": result["status"], "reason": result.get("reason", "")[:500]}
    with start_run(uri, EXPERIMENTS["profile"], f"profile {result['variant']}", tags) as run:
        run.log_params(config | {f"run_{k}": result[k] for k in PROFILE_CONDITIONS if k in result})
        run.log_metrics({k: result[k] for k in PROFILE_FIGURES if isinstance(result.get(k), int | float)})
        for point in result.get("memory_curve", []):
            if point["status"] == "ok":
                name = f"peak_mem_{point['mode']}_mib_b{point['batch']}"
                run.log_metrics({name: point["peak_bytes"] / MIB}, step=int(point["seconds"] * 1000))
        run.log_text(json.dumps(result, indent=2, default=str), "profile.json")
        if table_text:
            run.log_text(table_text, "params.txt")
        return run.run_id


def profile_recorder(uri: str):
    """A callback for profile_variants: record_profile of each row, with its parameter table."""
    from bench.profiling.params import param_table_text

    def record(row: dict, cfg) -> str:
        return record_profile(row, cfg.to_dict(), uri, param_table_text(row["variant"], cfg))

    return record


def record_scan_bench(rows: list[dict], uri: str, device: str, settings: dict) -> str:
    """Log a `bench scan` table (experiment 'scan'): one metric per row and figure."""
    with start_run(uri, EXPERIMENTS["scan"], "scan bench", provenance_tags(device) | {"task": "scan"}) as run:
        run.log_params(settings)
        metrics = {}
        for row in rows:
            label = "_".join(str(row[k]).replace(" ", "_") for k in ("shape", "scan"))
            metrics |= {f"{label}_{k}": v for k, v in row.items() if isinstance(v, float)}
        run.log_metrics(metrics)
        run.log_text(json.dumps(rows, indent=2), "scan_bench.json")
        return run.run_id


def record_evaluation(uri: str, result, paths: dict, audio: list, info: dict) -> str:
    """Log an evaluation (experiment 'evaluate'): summary means, CI and n per metric, the CSVs, a few wavs."""
    tags = provenance_tags(info["device"]) | {"task": "evaluate", "variant": info["label"],
                                              "data_fingerprint": info["data_fingerprint"]}
    with start_run(uri, EXPERIMENTS["evaluate"], f"evaluate {info['label']} {info['split']}", tags) as run:
        run.log_params(info)
        run.log_metrics(_finite(summary_means(result)))
        for path in paths.values():
            run.log_file(path)
        log_wavs(run, audio)
        return run.run_id


def log_wavs(run: Run, audio: list, folder_name: str = "enhanced") -> None:
    """A few enhanced utterances as 16 kHz wav artifacts."""
    import soundfile as sf

    if not audio:
        return
    with tempfile.TemporaryDirectory() as folder:
        for name, wav in audio:
            sf.write(Path(folder) / f"{name}.wav", wav, 16000)
        run.log_folder(Path(folder), folder_name)


def record_run(uri: str, info: dict, params: dict, figures: dict, train, paths: dict, audio: list,
               parent: str | None = None) -> str:
    """Log one trained (variant, seed): params, figures, loss curves, CSVs, best checkpoint, a few wavs."""
    tags = provenance_tags(info["device"]) | {"task": "run", "variant": info["variant"], "seed": str(info["seed"]),
                                              "data_fingerprint": info["data_fingerprint"],
                                              "status": info["status"], "reason": info["reason"][:500]}
    with start_run(uri, EXPERIMENTS["run"], f"run {info['variant']} seed {info['seed']}", tags, parent) as run:
        run.log_params(params)
        run.log_metrics(_finite(figures))
        for step, loss in train.train_curve[:: max(1, len(train.train_curve) // 1000)]:
            run.log_metrics({"train_loss": loss}, step=step)
        for step, loss in train.val_curve:
            run.log_metrics({"val_loss": loss}, step=step)
        for path in paths.values():
            run.log_file(path)
        if train.best_path is not None and Path(train.best_path).is_file():
            run.log_file(train.best_path, "checkpoint")
        log_wavs(run, audio)
        return run.run_id


@contextmanager
def parent_run(uri: str, name: str, tags: Mapping[str, str]) -> Iterator[str]:
    """The parent run of an ablation (experiment 'run'), whose id children pass as `parent`."""
    with start_run(uri, EXPERIMENTS["run"], name, tags) as run:
        yield run.run_id


def record_study(uri: str, name: str, params: dict, tags: dict) -> str:
    """The parent run of a study (experiment 'study'); its id is kept in the study's attributes."""
    with start_run(uri, EXPERIMENTS["study"], f"study {name}", tags | {"task": "study", "study": name}) as run:
        run.log_params(params)
        return run.run_id


def record_trial(uri: str, study: str, parent: str, number: int, params: dict, metrics: dict | None, tags: dict,
                 reason: str = "") -> str:
    """One study trial as a child of the study's run: its config, knobs and figures (or why it failed)."""
    tags = tags | {"task": "study-trial", "study": study, "trial": str(number),
                   "status": "ok" if metrics else "failed", "reason": reason[:500]}
    with start_run(uri, EXPERIMENTS["study"], f"{study} trial {number}", tags, parent) as run:
        run.log_params(params)
        if metrics:
            run.log_metrics(metrics)
        return run.run_id


def record_study_importances(uri: str, run_id: str, importances: dict[str, float]) -> None:
    """The study's parameter importances as metrics of its run ('importance_KNOB'), for reports to read."""
    from bench.tracking.store import client

    Run(client(uri), run_id).log_metrics({f"importance_{k}": v for k, v in importances.items()})
