"""Reports: tables from a small MLflow store of real tiny runs, checked against the runs themselves."""

import re
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from bench.__main__ import main as bench
from bench.tracking.store import runs_table
from reports.__main__ import main as reports
from reports.collect import load_store
from reports.render import escape_latex, latex, markdown
from reports.tables import all_tables, cell, main_table
from variants.errors import MbsbenchError

TINY = ["--set", "feature_dim=16", "--set", "temporal_layers=1"]
DATA = "synth:seed=5,train=8,val=4,test=4"


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    import os

    folder = tmp_path_factory.mktemp("store")
    os.environ["MBSBENCH_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    uri = f"sqlite:///{folder}/mlflow.db"
    for variant in ("optimized", "optimized-d_state12", "bsrnn"):
        assert bench(["profile", "--variant", variant, *TINY, "--batch", "1", "--seconds", "0.1", "--repeats", "1",
                      "--no-rss", "--tracking-uri", uri]) == 0
    assert bench(["ablate", "--base", "optimized", "--changes", "d_state12", *TINY, "--data", DATA, "--steps", "1",
                  "--batch", "2", "--crop-seconds", "0.5", "--workers", "1", "--out", str(folder / "runs"),
                  "--tracking-uri", uri, "--device", "cpu"]) == 0
    return uri


def rows_by_name(table) -> dict[str, dict[str, str]]:
    return {row[0]: dict(zip(table.header, row)) for row in table.rows}


def test_main_table_numbers_come_from_the_runs(store_uri: str) -> None:
    table = main_table(load_store(store_uri))
    rows = rows_by_name(table)
    runs = runs_table(store_uri, "mbsbench-run")
    run = runs[runs["variant"] == "optimized"].iloc[0]
    assert rows["optimized"]["PESQ"] == f"{run['pesq_wb']:.2f}"
    assert rows["optimized"]["STOI"] == f"{run['stoi']:.2f}"
    assert rows["noisy input"]["PESQ"] == f"{run['noisy_pesq_wb']:.2f}"
    profiles = runs_table(store_uri, "mbsbench-profile")
    prof = profiles[profiles["variant"] == "bsrnn"].iloc[0]
    assert rows["bsrnn"]["Params (M)"] == f"{prof['params_m']:.3f}"
    assert rows["bsrnn"]["Peak train (MiB)"] == f"{prof['peak_mem_train_mib']:.0f}"
    assert rows["bsrnn"]["PESQ"] == "-"  # profiled, never trained: a dash, not a zero
    assert "batch 1, 0.1 s" in table.caption


def test_a_trained_variant_never_profiled_shows_the_figures_of_its_config(store_uri: str) -> None:
    """Params and MACs depend on the config alone: the run logged them, so the table shows them (it showed '-')."""
    store = load_store(store_uri)
    unprofiled = replace(store, profiles=store.profiles[store.profiles["variant"] != "optimized"])
    rows = rows_by_name(main_table(unprofiled))
    run = runs_table(store_uri, "mbsbench-run").set_index("variant").loc["optimized"]
    assert rows["optimized"]["Params (M)"] == f"{run['params_m']:.3f}"
    assert rows["optimized"]["MACs (G/s)"] == f"{run['macs_g_per_s']:.2f}"
    assert rows["optimized"]["Peak train (MiB)"] == "-" and rows["optimized"]["RTF"] == "-"  # these need a profile


def test_ablation_and_claims(store_uri: str) -> None:
    tables = {t.name: t for t in all_tables(load_store(store_uri))}
    ablation = rows_by_name(tables["ablation_optimized"])
    assert set(ablation) == {"-d_state12"}
    profiles = runs_table(store_uri, "mbsbench-profile").set_index("variant")
    expected = profiles.loc["optimized-d_state12", "params_m"] - profiles.loc["optimized", "params_m"]
    assert ablation["-d_state12"]["d Params (M)"] == f"{expected:.3f}"
    assert re.fullmatch(r"-?\d+\.\d\d\*?|-", ablation["-d_state12"]["d PESQ"])
    claims = {row[0]: row for row in tables["claims"].rows}
    assert claims["original parameters"][3] == "-"  # original never profiled in this store
    assert claims["optimized parameters"][3] == f"{profiles.loc['optimized', 'params_m']:.3f}M"  # as "2.3M"
    # profiled at batch 1, 0.1 s on a CPU and trained on synth: never set beside a GPU or VoiceBank+DEMAND claim
    memory = claims["optimized: ~4 GB at batch 6-8"]
    assert memory[3] == "-" and "at batch 1, 0.1 s, CPU" in memory[4] and "not the claim's conditions" in memory[4]
    assert memory[4].startswith(f"{profiles.loc['optimized', 'peak_mem_train_mib'] / 1024:.2f} GiB")
    fits = claims["optimized: batch 6-8 fits"]
    assert fits[3] == "-" and "max batch predicted" in fits[4]
    pesq = claims["optimized PESQ at epoch 19"]
    assert pesq[3] == "-" and " on synth:" in pesq[4] and "1 steps" in pesq[4] and "not VoiceBank+DEMAND" in pesq[4]
    assert "quoted" in tables["literature"].header[0].lower()


def test_the_ablation_table_sets_compiled_step_times_beside_eager_ones(store_uri: str) -> None:
    """Profiles that timed compiled steps (bench ablate --profile-only --compile) add a compiled column; without
    them the table has the eager one alone."""
    from reports.tables import ablation_table

    store = load_store(store_uri)
    eager = ablation_table(store, "optimized")
    assert "d Train step (ms)" in eager.header and "d Train step compiled (ms)" not in eager.header
    profiles = store.profiles.copy()
    timed = {"optimized": 0.010, "optimized-d_state12": 0.0135}
    profiles["compiled_train_step_s"] = profiles["variant"].map(timed)
    profiles["run_compiled"] = "default"
    table = ablation_table(replace(store, profiles=profiles), "optimized")
    row = rows_by_name(table)["-d_state12"]
    assert row["d Train step compiled (ms)"] == "3.5"
    step = profiles.set_index("variant")["train_step_s"]
    assert row["d Train step (ms)"] == f"{1000 * (step['optimized-d_state12'] - step['optimized']):.1f}"
    assert "under torch.compile (mode default" in table.caption


def test_markdown_and_latex(store_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert reports(["tables", "--format", "latex", "--out", str(tmp_path), "--tracking-uri", store_uri]) == 0
    assert f"to {tmp_path}: main.tex, " in capsys.readouterr().err  # it says which files it wrote
    text = (tmp_path / "main.tex").read_text()
    for part in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", "% reproduce: python -m"):
        assert part in text
    body = text.split(r"\begin{tabular}")[1].split(r"\end{tabular}")[0]  # the reproduce comment is verbatim
    assert "_" not in body.replace(r"\_", "")  # every underscore escaped
    assert text.count("{") == text.count("}")
    assert reports(["tables", "--format", "md", "--out", str(tmp_path), "--tracking-uri", store_uri]) == 0
    md = (tmp_path / "main.md").read_text()
    assert "Reproduce: `" in md and "| Variant |" in md


def test_plots(store_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert reports(["plots", "--out", str(tmp_path), "--tracking-uri", store_uri]) == 0
    assert (tmp_path / "pareto_pesq_params_m.png").stat().st_size > 1000
    assert (tmp_path / "training_curves.pdf").exists()
    out = capsys.readouterr().out  # the store holds no study and no profile at several lengths: said, not silent
    assert "left out: study history: needs a study with its objective logged (studies search)" in out
    assert "left out: memory vs length: needs a profile measured at two or more lengths" in out


def test_cells_and_escapes() -> None:
    assert cell(float("nan")) == "-" and cell(3.14159) == "3.14" and cell(3.14159, 0.05) == "3.14 +- 0.05"
    assert escape_latex("d_state 5% +- 1") == r"d\_state 5\% $\pm$ 1"


def test_empty_store_is_one_line(tmp_path: Path) -> None:
    from bench.tracking.store import client

    client(f"sqlite:///{tmp_path}/empty.db")  # a store with its schema and no run (a missing file is another error)
    proc = subprocess.run([sys.executable, "-m", "reports", "tables", "--tracking-uri",
                           f"sqlite:///{tmp_path}/empty.db"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no mbsbench runs" in lines[-1], proc.stderr


def test_render_functions_are_pure() -> None:
    from reports.tables import literature_table

    table = literature_table()
    assert markdown(table).count("\n|") == len(table.rows) + 2
    assert latex(table).count(r" \\") == len(table.rows) + 1


FAKE_MEMORY = {4: 50.0, 8: 20.0, 12: 30.0, 16: 10.0, 24: 40.0, 32: 60.0}  # the Pareto front is 16, 24, 32


@pytest.fixture(scope="module")
def studies_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three studies in one store: params (minimize, measured), pesq (maximize) and multi (faked figures)."""
    from studies import trials as runner
    from studies.__main__ import main as studies

    folder = tmp_path_factory.mktemp("studies")
    uri = f"sqlite:///{folder}/mlflow.db"
    real = runner.evaluate_config

    def fake(objective, cfg, settings, trial=None):
        if objective == "params":
            return real(objective, cfg, settings, trial)
        pesq = cfg.d_state / 10
        return (pesq,) if objective == "pesq" else (pesq, FAKE_MEMORY[cfg.d_state])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "evaluate_config", fake)
        for objective in ("params", "pesq", "multi"):
            assert studies(["search", "--space", "d_state", "--objective", objective, "--trials", "6", "--storage",
                            str(folder / "s.log"), "--tracking-uri", uri, "--study-name", objective, "-q"]) == 0
    return uri


def test_study_table_ranks_by_each_study_objective(studies_uri: str) -> None:
    """Defect 1: studies of different objectives in one store; each ranked by its own direction."""
    from reports.tables import study_table

    rows = {row[0]: row for row in study_table(load_store(studies_uri)).rows}
    assert rows["params"][1:3] == ["6", "0"] and rows["params"][3].endswith("at d_state=4")
    assert rows["pesq"][3] == "val_pesq_wb 3.2 at d_state=32"  # maximize, not the smallest
    assert rows["multi"][3].startswith("Pareto front of 3: ")
    assert [f"d_state={k}" in rows["multi"][3] for k in (4, 8, 12, 16, 24, 32)] == [False] * 3 + [True] * 3


def test_importances_come_from_mlflow(studies_uri: str, tmp_path: Path) -> None:
    """Defects 5 and 6: the study logs its importances (one rule); reports plot them without Optuna."""
    store = load_store(studies_uri)
    study_run = store.studies.set_index("study").loc["params"]
    assert study_run["importance_d_state"] == pytest.approx(1.0)  # the only knob has all the importance
    assert "importance_d_state" not in store.studies.set_index("study").loc["multi"].dropna()
    assert reports(["plots", "--out", str(tmp_path), "--tracking-uri", studies_uri]) == 0
    assert (tmp_path / "importance_params.png").stat().st_size > 1000
    code = ("import sys, reports.__main__, reports.tables, reports.plots, reports.collect, reports.render; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('optuna', 'studies')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


def test_per_utterance_errors_are_not_swallowed(store_uri: str, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    """Defect 7: a missing artifact means no paired test; an unreachable artifact store is one line, exit 2,
    never a '-' in the ablation table (issue 25)."""
    import mlflow
    import requests

    from reports.tables import ablation_table

    store = load_store(store_uri)
    assert ablation_table(store, "optimized") is not None

    def unreachable(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Connection refused")

    monkeypatch.setattr(mlflow.tracking.MlflowClient, "download_artifacts", unreachable)
    capsys.readouterr()
    assert reports(["tables", "--tracking-uri", store_uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "artifacts unreachable (ConnectionError: Connection refused)" in err[0], err


def test_profiles_of_two_machines_are_never_mixed(tmp_path: Path) -> None:
    """Rows carry their device: one set of device tables per device, or --device to pick one."""
    from bench.tracking.store import client

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for variant in ("optimized", "bsrnn"):
        assert bench(["profile", "--variant", variant, *TINY, "--batch", "1", "--seconds", "0.1", "--repeats", "1",
                      "--no-rss", "--tracking-uri", uri, "--device", "cpu", "-q"]) == 0
    runs = runs_table(uri, "mbsbench-profile")
    gpu = runs[runs["variant"] == "bsrnn"]["run_id"].iloc[0]
    client(uri).set_tag(gpu, "device", "NVIDIA H200")  # as if profiled on the lab's GPU box
    tables = {t.name: t for t in all_tables(load_store(uri))}
    cpu, h200 = tables["main_device1"], tables["main_device2"]
    assert [r[0] for r in cpu.rows] == ["optimized"] and [r[0] for r in h200.rows] == ["bsrnn"]
    assert cpu.caption.startswith("[CPU") and h200.caption.startswith("[NVIDIA H200]")
    only = {t.name: t for t in all_tables(load_store(uri), "H200")}
    assert [r[0] for r in only["main"].rows] == ["bsrnn"]
    proc = subprocess.run([sys.executable, "-m", "reports", "tables", "--tracking-uri", uri, "--device", "TPU"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "devices there: " in proc.stderr and "NVIDIA H200" in proc.stderr


def run_line(line: str) -> None:
    """Each command of a reproduce line in this process, as its CLI runs it; each must succeed."""
    from studies.__main__ import main as studies

    clis = {"bench": bench, "studies": studies, "reports": reports}
    for command in line.split(" && "):
        words = shlex.split(command)
        assert words[:2] == ["python", "-m"] and words[2] in clis, command
        assert clis[words[2]]([*words[3:], "-q"]) == 0, command


TIMED = {"RTF", "d Train step (ms)", "d Train step compiled (ms)"}  # figures of the clock: the same rows otherwise


def same_rows(table, again) -> None:
    keep = [i for i, name in enumerate(table.header) if name not in TIMED]
    assert again.header == table.header and again.caption == table.caption
    assert [[row[i] for i in keep] for row in again.rows] == [[row[i] for i in keep] for row in table.rows]


def test_each_tables_reproduce_line_makes_the_same_rows(store_uri: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23, item 6: the line is built from the runs behind the rows (it was a placeholder with NAME and
    batch 6, 2 s under a caption saying batch 1); run into an empty store, it makes the same table."""
    study_store = f"sqlite:///{tmp_path}/studies.db"
    from studies.__main__ import main as studies

    assert studies(["create", "--space", "d_state", "--objective", "params", "--trials", "3", "--storage",
                    str(tmp_path / "made.log"), "--tracking-uri", study_store, "--study-name", "tiny", "-q"]) == 0
    assert studies(["work", "tiny", "--storage", str(tmp_path / "made.log"), "-q"]) == 0
    tables = [t for t in all_tables(load_store(store_uri)) if t.name != "literature"]
    tables += [t for t in all_tables(load_store(study_store)) if t.name == "studies"]
    assert {t.name for t in tables} == {"main", "ablation_optimized", "claims", "studies"}
    assert all("NAME" not in t.command and "..." not in t.command and t.unrecorded == 0 for t in tables)
    assert tables[-1].command == ("python -m studies search --space d_state --objective params --trials 3 "
                                  "--study-name tiny && python -m reports tables")
    made: dict[str, str] = {}  # line -> the store it was run into (main and claims share one)
    for table in tables:
        if table.command not in made:
            made[table.command] = f"sqlite:///{tmp_path}/again{len(made)}.db"
            folder = tmp_path / f"again{len(made)}"
            folder.mkdir()
            monkeypatch.chdir(folder)
            monkeypatch.setenv("MLFLOW_TRACKING_URI", made[table.command])
            run_line(table.command)
        again = {t.name: t for t in all_tables(load_store(made[table.command]))}
        same_rows(table, again[table.name])
        assert again[table.name].command == table.command


@pytest.mark.parametrize(("prog", "argv", "expected"), [
    ("python -m bench", ["run", "--variant", "optimized", "--out", "x", "--tracking-uri=sqlite:///a.db", "-q",
                         "--resume", "--steps", "9"], "python -m bench run --variant optimized --steps 9"),
    ("python -m bench", ["ablate", "--base", "original", "--queue", "j.log", "--study-name", "q", "--seeds", "0,1"],
     "python -m bench ablate --base original --seeds 0,1"),
    ("python -m studies", ["create", "--space", "d_state", "--storage", "postgresql://h/db", "--study-name", "s"],
     "python -m studies search --space d_state --study-name s"),
    ("python -m bench", ["run", "--data", "vbd:/my data"], "python -m bench run --data 'vbd:/my data'"),
])
def test_reproduce_command_keeps_what_computes(prog: str, argv: list[str], expected: str) -> None:
    from bench.invocation import reproduce_command

    assert reproduce_command(prog, argv) == expected


def test_a_torchrun_rank_names_its_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.invocation import reproduce_command

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert reproduce_command("python -m bench", ["run", "--variant", "x"]) == "python -m bench run --variant x " \
                                                                                "--nproc 2"


def test_runs_come_tidy_and_a_name_two_kinds_share_must_agree() -> None:
    """Issue 25: only bench/tracking knows MLflow's column prefixes; a tag and a param of one name are one column
    when they agree (evaluations logged data_fingerprint as both) and an error when they differ."""
    from bench.tracking.store import tidy_runs

    raw = pd.DataFrame({"run_id": ["a", "b"], "status": ["FINISHED", "KILLED"], "experiment_id": ["1", "1"],
                        "tags.status": ["ok", "nan"], "metrics.pesq_wb": [2.5, None],
                        "tags.data_fingerprint": ["f", None], "params.data_fingerprint": ["f", "g"]})
    tidy = tidy_runs(raw)
    assert list(tidy.columns) == ["run_id", "run_status", "status", "pesq_wb", "data_fingerprint"]
    assert list(tidy["run_status"]) == ["FINISHED", "KILLED"] and list(tidy["status"]) == ["ok", "nan"]
    assert list(tidy["data_fingerprint"]) == ["f", "g"]  # each run's value, whichever kind holds it
    raw.loc[0, "params.data_fingerprint"] = "h"
    with pytest.raises(MbsbenchError, match=r"data_fingerprint.*different values"):
        tidy_runs(raw)


def test_the_main_table_gains_dnsmos_columns_and_names_its_scorers() -> None:
    """DNSMOS columns where runs have them, the scorers in the caption, and runs of two scorers refused."""
    from reports.collect import Store
    from reports.tables import main_table

    runs = pd.DataFrame({"run_id": ["r0", "r1"], "run_status": "FINISHED", "start_time": [1, 2],
                         "variant": "optimized", "seed": ["0", "1"], "data": "synth", "device": "cpu",
                         "command": "python -m bench run --variant optimized --dnsmos", "pesq_wb": [2.0, 2.2],
                         "dnsmos_ovrl": [3.0, 3.2], "noisy_dnsmos_ovrl": [2.5, 2.5], "scorer_pesq": "pesq 0.0.4",
                         "dnsmos_scorer": "speechmos 0.0.1.1, onnxruntime 1.32.0", "dnsmos_p835_sha256": "ab" * 32})
    empty = pd.DataFrame()
    table = main_table(Store("sqlite:///x.db", empty, runs, empty, empty))
    column = table.header.index("DNSMOS OVRL")
    assert "DNSMOS BAK" not in table.header  # no run has it
    assert [row[column] for row in table.rows] == ["2.50", "3.10 +- 1.27"]
    assert "Scored by pesq 0.0.4; speechmos 0.0.1.1, onnxruntime 1.32.0 (model sha256 p835 abababababab)" in \
        table.caption
    plain = runs.drop(columns=[c for c in runs if "dnsmos" in c])
    assert "DNSMOS OVRL" not in main_table(Store("sqlite:///x.db", empty, plain, empty, empty)).header
    runs.loc[1, "dnsmos_scorer"] = "speechmos 0.0.2, onnxruntime 1.32.0"
    with pytest.raises(MbsbenchError, match=r"run r0 and .*0\.0\.2.* in run r1"):
        main_table(Store("sqlite:///x.db", empty, runs, empty, empty))
