"""Reports: tables from a small MLflow store of real tiny runs, checked against the runs themselves."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import main as bench
from bench.tracking import search_runs
from reports.__main__ import main as reports
from reports.collect import load_store
from reports.render import escape_latex, latex, markdown
from reports.tables import all_tables, cell, main_table

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
    runs = search_runs(store_uri, "mbsbench-run")
    run = runs[runs["tags.variant"] == "optimized"].iloc[0]
    assert rows["optimized"]["PESQ"] == f"{run['metrics.pesq_wb']:.2f}"
    assert rows["optimized"]["STOI"] == f"{run['metrics.stoi']:.2f}"
    assert rows["noisy input"]["PESQ"] == f"{run['metrics.noisy_pesq_wb']:.2f}"
    profiles = search_runs(store_uri, "mbsbench-profile")
    prof = profiles[profiles["tags.variant"] == "bsrnn"].iloc[0]
    assert rows["bsrnn"]["Params (M)"] == f"{prof['metrics.params_m']:.3f}"
    assert rows["bsrnn"]["Peak train (MiB)"] == f"{prof['metrics.peak_mem_train_mib']:.0f}"
    assert rows["bsrnn"]["PESQ"] == "-"  # profiled, never trained: a dash, not a zero
    assert "batch 1, 0.1 s" in table.caption


def test_ablation_and_claims(store_uri: str) -> None:
    tables = {t.name: t for t in all_tables(load_store(store_uri))}
    ablation = rows_by_name(tables["ablation_optimized"])
    assert set(ablation) == {"-d_state12"}
    profiles = search_runs(store_uri, "mbsbench-profile").set_index("tags.variant")
    expected = profiles.loc["optimized-d_state12", "metrics.params_m"] - profiles.loc["optimized", "metrics.params_m"]
    assert ablation["-d_state12"]["d Params (M)"] == f"{expected:.3f}"
    assert re.fullmatch(r"-?\d+\.\d\d\*?|-", ablation["-d_state12"]["d PESQ"])
    claims = {row[0]: row for row in tables["claims"].rows}
    assert claims["original parameters"][3] == "-"  # original never profiled in this store
    assert claims["optimized parameters"][3] == f"{profiles.loc['optimized', 'metrics.params_m']:.3f}"
    assert "quoted" in tables["literature"].header[0].lower()


def test_markdown_and_latex(store_uri: str, tmp_path: Path) -> None:
    assert reports(["tables", "--format", "latex", "--out", str(tmp_path), "--tracking-uri", store_uri]) == 0
    text = (tmp_path / "main.tex").read_text()
    for part in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", "% reproduce: python -m"):
        assert part in text
    body = text.split(r"\begin{tabular}")[1]
    assert "_" not in body.replace(r"\_", "")  # every underscore escaped
    assert text.count("{") == text.count("}")
    assert reports(["tables", "--format", "md", "--out", str(tmp_path), "--tracking-uri", store_uri]) == 0
    md = (tmp_path / "main.md").read_text()
    assert "Reproduce: `" in md and "| Variant |" in md


def test_plots(store_uri: str, tmp_path: Path) -> None:
    assert reports(["plots", "--out", str(tmp_path), "--tracking-uri", store_uri]) == 0
    assert (tmp_path / "pareto_pesq_params_m.png").stat().st_size > 1000
    assert (tmp_path / "training_curves.pdf").exists()


def test_cells_and_escapes() -> None:
    assert cell(float("nan")) == "-" and cell(3.14159) == "3.14" and cell(3.14159, 0.05) == "3.14 +- 0.05"
    assert escape_latex("d_state 5% +- 1") == r"d\_state 5\% $\pm$ 1"


def test_empty_store_is_one_line(tmp_path: Path) -> None:
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
