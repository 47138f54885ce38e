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


@pytest.mark.processes  # two real `python -m bench` processes
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


SHELLS = ("bench/cli/", "bench/__main__.py", "studies/__main__.py", "reports/__main__.py", "bench/doctor/__main__.py")
# imports that stay inside a function, each with its reason
LAZY = {
    ("studies/storage.py", "studies.journal"): "Optuna, loaded only when a journal is opened",
    ("variants/registry.py", "variants.bsrnn"): "torch: the registry names variants for torch-free CLIs",
    ("variants/registry.py", "variants.mbsnet"): "torch: the registry names variants for torch-free CLIs",
    ("variants/scan_triton.py", "variants.scan_triton_kernels"): "triton: optional, absent on most CPU machines",
    ("bench/training/request.py", "variants.discriminator"): "torch: checked only for a MetricGAN request",
}
# the one import from bench up into studies: `bench ablate --queue` hands the ablation to a study's queue
UPWARD = {("bench.cli.run", "studies.queue"), ("bench.cli.run", "studies.storage")}


def module_imports() -> dict[str, list[tuple[str, bool]]]:
    """Each project module's imports of project or standard-library modules: (module, inside a function)."""
    stdlib = set(sys.stdlib_module_names)
    found: dict[str, list[tuple[str, bool]]] = {}
    for path in sources(*PACKAGES):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text())
        local = {id(n) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                 for n in ast.walk(fn)}
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                if name.split(".")[0] in PACKAGES or name.split(".")[0] in stdlib:
                    found.setdefault(rel, []).append((name, id(node) in local))
    return found


def test_imports_are_at_the_top() -> None:
    """A file's header says what it depends on: at most 10 function-local imports outside the CLI shells."""
    hidden = sorted((rel, name) for rel, imports in module_imports().items() if not rel.startswith(SHELLS)
                    for name, inside in imports if inside and name.split(".")[0] in PACKAGES + tuple(
                        sys.stdlib_module_names))
    assert set(hidden) <= set(LAZY) and len(hidden) <= 10, hidden


def project_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in it)."""
    def module(rel: str) -> str:
        return rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")

    known = {module(p.relative_to(ROOT).as_posix()) for p in sources(*PACKAGES)}
    graph: dict[str, set[str]] = {}
    for rel, imports in module_imports().items():
        for name, _ in imports:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module(rel):
                graph.setdefault(module(rel), set()).add(name)
    return graph


def test_no_import_circle_and_nothing_imported_upward() -> None:
    graph = project_graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            here = todo.pop()
            for nxt in graph.get(here, ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    circles = sorted(m for m in graph if reaches(m, m))
    upward = {(m, t) for m, targets in graph.items() for t in targets
              if m.split(".")[0] == "bench" and t.split(".")[0] in ("studies", "reports")}
    assert circles == [] and upward <= UPWARD, (circles, upward - UPWARD)


def test_the_clis_and_a_request_check_load_no_torch(tmp_path: Path) -> None:
    """A bad flag is refused before torch (or pandas, MLflow, Optuna) loads: the CLIs import light modules."""
    code = ("import sys\nimport bench.__main__, studies.__main__, reports.__main__\n"
            "from bench.cli.run import run_request\nfrom bench.data.datasets import check_spec\n"
            "from bench.training.request import check_request\nimport argparse\n"
            "args = bench.__main__.make_parser().parse_args(['run', '--variant', 'optimized', '--out', sys.argv[1]])\n"
            "check_request(run_request(args, ['optimized']), check_spec)\n"
            "print(sorted(m for m in ('torch', 'pandas', 'mlflow', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_no_helper_below_preflight_takes_more_than_four_parameters() -> None:
    """One plan going down: a planned run, the context and what the experiment shares travel whole, not in
    pieces (the trainer took 11 parameters, a worker 9)."""
    wide = []
    for path in sources("bench/training", "studies"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                names = [a.arg for a in args if a.arg not in ("self", "cls")]
                if len(names) > 4 and path.name != "__main__.py":
                    wide.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({', '.join(names)})")
    assert wide == []


class ModuleWalk:
    """Follows calls through the project's modules (a sys.settrace hook: it sees each Python call): the modules
    entered, and every climb back up, a call into a module already on the call stack below the caller's
    (A -> B -> A). A call is the project's own (its caller a project frame) or a submodule's forward run by
    nn.Module; torch's callbacks into a mode, a hook or an autograd backward are torch's, not a step of the walk."""

    MODULE_CALL = str(Path("torch") / "nn" / "modules" / "module.py")
    CALLBACKS = ("__torch_function__", "__torch_dispatch__")

    def __init__(self) -> None:
        self.entered: set[str] = set()
        self.climbs: dict[tuple[str, str, str], int] = {}
        self._modules: dict[str, str | None] = {}

    def module_of(self, frame) -> str | None:
        path = frame.f_code.co_filename
        if path not in self._modules:
            rel = path[len(str(ROOT)) + 1:] if path.startswith(str(ROOT)) else ""
            self._modules[path] = rel if rel.split(os.sep)[0] in PACKAGES else None
        return self._modules[path]

    def __call__(self, frame, event: str, _arg) -> None:
        module, caller = self.module_of(frame), frame.f_back
        if module is None or caller is None or frame.f_code.co_name in self.CALLBACKS:
            return None
        if self.module_of(caller) is None and not (caller.f_code.co_filename.endswith(self.MODULE_CALL) and
                                                   frame.f_code.co_name == "forward"):
            return None
        below = []
        while caller is not None:
            above = self.module_of(caller)
            if above and (not below or below[-1] != above):
                below.append(above)
            caller = caller.f_back
        if below and module != below[0]:
            self.entered.add(module)
            if module in below:
                key = (below[0], module, frame.f_code.co_name)
                self.climbs[key] = self.climbs.get(key, 0) + 1
        return None


def test_a_run_request_walks_down_without_climbing_back(tmp_path: Path) -> None:
    """Issue 25: following run_experiment call by call, no module calls back up into one it was called from
    (the trainer called the experiment's progress bar; the STFT's module called the model that called it)."""
    from bench.training.experiment import RunContext, RunRequest, run_experiment

    request = RunRequest(("optimized",), data="synth:seed=5,train=8,val=4,test=4", steps=1, batch=2,
                         out=tmp_path / "runs", overrides={"feature_dim": 16, "temporal_layers": 1})
    walk = ModuleWalk()
    sys.settrace(walk)
    try:
        run_experiment(request, RunContext("cpu", f"sqlite:///{tmp_path / 'mlflow.db'}", workers=1))
    finally:
        sys.settrace(None)
    assert len(walk.entered) > 20 and walk.climbs == {}
