"""The layout's rules hold: argparse in bench/cli only, names defined once, every flag explained, no dead parameters."""

import argparse
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "studies", "reports", "variants")
# parameters a signature imposes: the scan table's common signature, torch's dispatch and function-mode protocols,
# and the schema of a registered operator, which its fake implementation takes whole
IMPOSED = {("selective_scan_ref", "chunk_size"), ("selective_scan_naive", "chunk_size"),
           ("selective_scan_cuda", "chunk_size"), ("__torch_dispatch__", "types"),
           ("__torch_function__", "types"), ("_scan_forward_fake", "h0"), ("_scan_backward_fake", "gy"),
           ("_scan_backward_fake", "delta"), ("_scan_backward_fake", "B"), ("_scan_backward_fake", "C"),
           ("_scan_backward_fake", "D")}


def sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def test_argparse_lives_in_bench_cli() -> None:
    users = [p.relative_to(ROOT).as_posix() for p in sources("bench") if "argparse" in p.read_text()]
    assert [p for p in users if not p.startswith("bench/cli/")] == []


def test_experiment_names_are_literals_in_one_module() -> None:
    users = {p.relative_to(ROOT).as_posix() for p in sources(*PACKAGES) if re.search(r"mbsbench-\w", p.read_text())}
    assert users == {"bench/tracking/schema.py"}


def test_no_function_ignores_a_parameter() -> None:
    """Defect 8: a parameter no caller needs is dead code (interface-imposed ones excepted)."""
    unused = []
    for path in sources(*PACKAGES):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if all(isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant) for b in node.body):
                continue  # an interface's no-op (docstring only): its parameters are the protocol
            used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            unused += [f"{path.name}:{node.lineno} {node.name}({a.arg})" for a in args
                       if a.arg not in ("self", "cls") and not a.arg.startswith("_") and a.arg not in used
                       and (node.name, a.arg) not in IMPOSED]
    assert unused == []


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every subcommand parser of the three CLIs, by its prog."""
    from bench.__main__ import make_parser as bench
    from reports.__main__ import make_parser as reports
    from studies.__main__ import make_parser as studies

    found = []

    def visit(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in dict.fromkeys(action.choices.values()):
                    found.append((child.prog, child))
                    visit(child)

    for make in (bench, studies, reports):
        root = make()
        found.append((root.prog, root))
        visit(root)
    return found


def test_every_flag_has_help_and_every_command_an_example() -> None:
    missing, no_example = [], []
    for prog, parser in parsers():
        if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions) and " " in parser.prog.split(
                " -m ")[-1]:
            continue  # a command group ('bench data'): its commands carry the examples; a CLI's root has its own
        missing += [f"{prog} {a.option_strings or a.dest}" for a in parser._actions if not a.help]
        if "examples:\n  python -m" not in (parser.epilog or ""):
            no_example.append(prog)
    assert missing == [] and no_example == []
    assert len(parsers()) >= 13


@pytest.mark.parametrize("cli", ["bench", "studies", "reports"])
def test_version(cli: str) -> None:
    proc = subprocess.run([sys.executable, "-m", cli, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and re.fullmatch(r"mbsbench \d+\.\d+\.\d+\n", proc.stdout)


def test_tracking_import_changes_nothing() -> None:
    """Defect 9: importing the tracking modules sets no variable and imports no MLflow; the client does."""
    code = ("import json, os, sys; before = dict(os.environ); import bench.tracking.store, bench.tracking.records; "
            "print(json.dumps([dict(os.environ) == before, 'mlflow' in sys.modules]))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert json.loads(proc.stdout) == [True, False], proc.stderr


def test_quiet_leaves_stderr_empty(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench", "profile", "--variant", "optimized", "--set", "feature_dim=16", "--batch",
            "1", "--seconds", "0.1", "--repeats", "1", "--no-rss", "--no-track", "--device", "cpu"]
    loud = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    quiet = subprocess.run([*argv, "-q"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert loud.returncode == quiet.returncode == 0
    assert "profiling optimized" in loud.stderr and quiet.stderr == ""
    assert quiet.stdout.splitlines()[3].split()[0] == "optimized"  # the conditions line, header, rule, row


def test_one_ci_and_one_ablation_naming_rule() -> None:
    """Defect 5: the per-utterance summary and the reports compute the same CI; the CLI's ablation and the
    reports' ablation table name the variants by the registry's one rule."""
    import pandas as pd

    from bench.quality.metrics import summarize
    from bench.quality.stats import mean_ci
    from variants.registry import CHANGES, single_change_names

    values = pd.Series([3.1, 2.7, float("nan"), 3.4, 2.9])
    row = summarize(pd.DataFrame({"pesq_wb": values})).iloc[0]
    assert (row["mean"], row["ci95"], row["n_scored"]) == mean_ci(values)
    assert single_change_names("original") == [f"original+{c}" for c in CHANGES]
    assert single_change_names("optimized", ["expand1"]) == ["optimized-expand1"]
    for module in ("reports/tables.py", "bench/cli/run.py"):
        assert "single_change_names" in (ROOT / module).read_text()
    assert "student_t" not in (ROOT / "reports" / "collect.py").read_text()
