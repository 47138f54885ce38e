"""Every record_* function: what each task writes to MLflow, under the names of bench/tracking/schema.py."""

import json
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import soundfile as sf

from bench.console import status
from bench.profiling.params import param_table_text
from bench.tracking.schema import EXPERIMENTS, PROFILE_CONDITIONS, PROFILE_FIGURES
from bench.tracking.store import (
    Run,
    client,
    create_run,
    ended,
    mlflow_module,
    provenance_tags,
    run_figures,
    runs_table,
    start_run,
)
from variants.errors import MbsbenchError, error_line

MIB = 2**20


def summary_means(evaluation, prefix: str = "") -> dict[str, float]:
    """{prefix + metric: mean, ..._ci95: half-width, ..._n: n scored, ..._n_failed: of those, outputs scored
    at the worst value} of an Evaluation's summary (or {})."""
    if evaluation is None:
        return {}
    out = {}
    for row in evaluation.summary.to_dict("records"):
        name = prefix + row["metric"]
        out |= {name: row["mean"], f"{name}_ci95": row["ci95"], f"{name}_n": row["n_scored"],
                f"{name}_n_failed": row["n_failed"]}
    return out


def _finite(metrics: Mapping[str, object]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and v == v}


def record_profile(result: dict, config: dict, uri: str, table_text: str = "", extra_tags: dict | None = None) -> str:
    """Log one profile (experiment 'profile'); returns the run id."""
    tags = provenance_tags(result["device"]) | {"task": "profile", "variant": result["variant"]} | (extra_tags or {})
    tags |= {"status": result["status"], "reason": result.get("reason", "")[:500], "timing": result.get("timing", "-")}
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


def profile_recorder(uri: str, extra_tags: dict | None = None):
    """A callback for profile_variants: record_profile of each row, with its parameter table.

    A store that fails mid-sweep does not stop the sweep: the row gets run_id '' and its 'log_error'.
    """
    def record(row: dict, cfg) -> str:
        try:
            return record_profile(row, cfg.to_dict(), uri, param_table_text(row["variant"], cfg), extra_tags)
        except mlflow_errors() as err:
            row["log_error"] = error_line(err, 200)
            return ""

    return record


def logged_or_kept(action, keep):
    """action() (a record_* call); when the store fails, keep() saves the results (or `keep` names where
    they already are) and a one-line error says where."""
    try:
        return action()
    except mlflow_errors() as err:
        where = keep() if callable(keep) else keep
        raise MbsbenchError(f"MLflow logging failed ({error_line(err, 160)}); "
                            f"the results are kept in {where}") from None


def keep_unlogged(rows: list[dict], task: str) -> Path:
    """Rows the store did not take, as JSON in ./unlogged/ (the working folder); the file's path."""
    folder = Path("unlogged")
    folder.mkdir(exist_ok=True)
    path = folder / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(rows, indent=2, default=str))
    return path


def record_stream(row: dict, config: dict, uri: str) -> str:
    """Log a `bench stream` (experiment 'stream'): the streaming figures, the DNS rule and the timing conditions."""
    tags = provenance_tags(row["device"]) | {"task": "stream", "variant": row["variant"], "dns_rule": row["dns_rule"],
                                             "timing": row["timing"]}
    with start_run(uri, EXPERIMENTS["stream"], f"stream {row['variant']}", tags) as run:
        run.log_params(config | {"stream_seconds": row["seconds"], "stream_threads": row["threads"]})
        run.log_metrics({k: v for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)})
        return run.run_id


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
        run.log_params({k: v for k, v in info.items() if k != "data_fingerprint"})  # a tag, as on every run
        run.log_metrics(_finite(summary_means(result)))
        for path in paths.values():
            run.log_file(path)
        log_wavs(run, audio)
        return run.run_id


def log_wavs(run: Run, audio: list, folder_name: str = "enhanced") -> None:
    """A few enhanced utterances as 16 kHz wav artifacts."""
    if not audio:
        return
    with tempfile.TemporaryDirectory() as folder:
        for name, wav in audio:
            sf.write(Path(folder) / f"{name}.wav", wav, 16000)
        run.log_folder(Path(folder), folder_name)


class RunRecord:
    """The MLflow run of one (variant, seed) training, there from the first step to the end.

    It observes the Trainer (step, validated, checkpointed): losses are buffered and written at each
    validation and checkpoint, so a killed run keeps its curves up to its last checkpoint. A tracking
    error while training does not stop the training: it is remembered, the buffer kept, and finish()
    reports it after the results were written to the run folder.
    """

    def __init__(self, run: Run):
        self.run, self.pending, self.error = run, {}, ""

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @classmethod
    def start(cls, uri: str, name: str, tags: dict, params: dict, parent: str | None = None) -> "RunRecord":
        """A new run of experiment 'run' with its config and conditions logged before the first step."""
        record = cls(create_run(uri, EXPERIMENTS["run"], name, tags, parent))
        record.run.log_params(params)
        return record

    @classmethod
    def resume(cls, uri: str, run_id: str, tags: dict) -> "RunRecord":
        """The run a checkpoint names, RUNNING again (a resumed training continues the same run)."""
        tracking = client(uri)
        try:
            tracking.get_run(run_id)
        except mlflow_errors() as err:
            raise MbsbenchError(f"--resume: the checkpoint's MLflow run {run_id} is not in {uri} "
                                f"({type(err).__name__}); resume with the --tracking-uri it was logged to, or "
                                "--no-track") from None
        record = cls(Run(tracking, run_id))
        record.run.reopen()
        record.run.set_tags(tags)
        return record

    def _safely(self, action) -> None:
        try:
            action()
        except mlflow_errors() as err:
            if not self.error:
                status(f"warning: MLflow logging failed ({type(err).__name__}: {str(err)[:120]}); "
                       "training goes on, the results will be kept in the run folder")
            self.error = error_line(err, 200)

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for name, points in pending.items():
            self._safely(lambda name=name, points=points: self.run.log_points(name, points))
        if self.error:  # kept for the run folder's result and a later flush
            for name, points in pending.items():
                self.pending.setdefault(name, [])[:0] = points

    def step(self, step: int, loss: float) -> None:
        self.pending.setdefault("train_loss", []).append((step, loss))

    def figures(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            if value == value:
                self.pending.setdefault(name, []).append((step, value))

    def validated(self, step: int, loss: float, lr: float) -> None:
        self.flush()
        self._safely(lambda: self.run.log_metrics({"val_loss": loss, "lr": lr}, step=step))

    def checkpointed(self, step: int) -> None:
        self.flush()
        self._safely(lambda: self.run.set_tags({"last_checkpoint_step": str(step)}))

    def finish(self, figures: dict, tags: dict, files: list[Path], checkpoint: Path | None, audio: list) -> None:
        """Log the figures, tags and artifacts, then end the run FINISHED (FAILED with a reason for a NaN)."""
        self.flush()

        def log() -> None:
            self.run.log_metrics(_finite(figures))
            self.run.set_tags(tags)
            for path in files:
                self.run.log_file(path)
            if checkpoint is not None and checkpoint.is_file():
                self.run.log_file(checkpoint, "checkpoint")
            log_wavs(self.run, audio)
            failed = tags.get("status", "ok") != "ok"
            self.run.end("FAILED" if failed else "FINISHED", tags.get("reason", "") if failed else "")

        self._safely(log)

    def end(self, status: str, reason: str = "") -> None:
        """End the run early: KILLED (interrupt) or FAILED (an error), with what was logged so far."""
        self.flush()
        self._safely(lambda: self.run.end(status, reason))


def mlflow_errors() -> tuple[type[BaseException], ...]:
    """What a failing tracking store raises: MLflow's errors, and OSError (connections, files)."""
    return (mlflow_module().exceptions.MlflowException, OSError)


@contextmanager
def parent_run(uri: str, name: str, tags: Mapping[str, str], run_id: str | None = None) -> Iterator[str]:
    """The parent run of an ablation (experiment 'run'), whose id children pass as `parent`; `run_id` reopens
    the parent of a resumed ablation."""
    if run_id is None:
        run = create_run(uri, EXPERIMENTS["run"], name, tags)
    else:
        run = Run(client(uri), run_id)
        run.reopen()
    with ended(run):
        yield run.run_id


def record_study(uri: str, name: str, params: dict, tags: dict, ablation: bool = False) -> str:
    """The parent run of a study (experiment 'study'), or of a queued ablation (experiment 'run', task
    'ablate', like a local one); its id is kept in the study's attributes."""
    experiment, task = (EXPERIMENTS["run"], "ablate") if ablation else (EXPERIMENTS["study"], "study")
    with start_run(uri, experiment, f"{task} {name}", {"task": task} | tags | {"study": name}) as run:
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
    Run(client(uri), run_id).log_metrics({f"importance_{k}": v for k, v in importances.items()})


def finished_run(uri: str, key: str) -> dict | None:
    """The FINISHED training run of a run key ('mbsbench.run_key'): {'run_id', and its figures}, or None."""
    runs = runs_table(uri, EXPERIMENTS["run"], {"mbsbench.run_key": key}, "FINISHED")
    if runs.empty:
        return None
    run_id = runs["run_id"].iloc[0]
    return {"run_id": run_id} | run_figures(uri, run_id)
