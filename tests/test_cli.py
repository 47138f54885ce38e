"""The CLI: exit 0 and parseable output on good input; exit 2 and one stderr line on bad input."""

import json
import subprocess
import sys

import pytest

from bench.__main__ import main


def test_list_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert by_name["original"]["params"] == 7_325_830
    assert by_name["optimized"]["params"] == 2_139_920
    assert len([n for n in by_name if n.startswith(("original+", "optimized-"))]) == 16


def test_list_table(capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "original+*"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 + 8
    assert "7,325,830" in lines[2]  # original+chunked_scan keeps every parameter


def test_params_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["params", "--variant", "optimized", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["module"]: r["params"] for r in data["modules"]}
    assert rows["(total)"] == 2_139_920 and rows["decoder"] == 1_824_268
    assert data["config"]["d_state"] == 12


def test_params_with_set(capsys: pytest.CaptureFixture) -> None:
    assert main(["params", "--variant", "optimized", "--set", "d_state=16"]) == 0
    assert "2,146,064" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["params", "--variant", "orignal"], "did you mean 'original'"),
        (["params", "--variant", "optimized", "--set", "dstate=3"], "did you mean 'd_state'"),
        (["params", "--variant", "optimized", "--set", "d_state=x"], "expected an integer"),
        (["list", "nothing*"], "no variant matches"),
    ],
)
def test_bad_input_one_line(argv: list[str], fragment: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0]
    assert "Traceback" not in proc.stderr


def test_no_flag_defaults_to_an_empty_string() -> None:
    """An empty value typed is an error (--queue '' ran the whole ablation here); so no default may be ''."""
    import argparse

    from bench.__main__ import make_parser as bench_parser
    from reports.__main__ import make_parser as reports_parser
    from studies.__main__ import make_parser as studies_parser

    def actions(parser: argparse.ArgumentParser):
        for action in parser._actions:
            yield parser.prog, action
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from actions(sub)

    found = [(prog, a.dest) for make in (bench_parser, studies_parser, reports_parser)
             for prog, a in actions(make()) if a.default == ""]
    assert found == []


EXIT_NOW = """
import atexit, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from bench.cli.shell import exit_now
out = sys.argv[1]
atexit.register(lambda: open(out + ".atexit", "w").close())
threading.Thread(target=lambda: (time.sleep(0.3), open(out + ".thread", "w").close())).start()
pool = ThreadPoolExecutor(1)
pool.submit(time.sleep, 0)  # an idle worker left waiting for work: stopped at exit, not joined forever
print("result", end="")  # unflushed on a pipe until exit_now flushes it
exit_now(3)
"""


def test_exit_now_ends_as_a_normal_exit_would(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-c", EXIT_NOW, str(tmp_path / "f")], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout) == (3, "result")
    assert (tmp_path / "f.atexit").exists() and (tmp_path / "f.thread").exists()


def test_the_command_line_exits_with_its_code_and_output() -> None:
    good = subprocess.run([sys.executable, "-m", "bench", "list", "optimized"], capture_output=True, text=True,
                          timeout=120)
    bad = subprocess.run([sys.executable, "-m", "studies", "show", "--storage", "nosuch://x"], capture_output=True,
                         text=True, timeout=120)
    assert good.returncode == 0 and "2,139,920" in good.stdout
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.splitlines()) == 1
