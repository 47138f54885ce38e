"""python -m studies: search (add trials to a study) and show (best trials, Pareto front, importances)."""

import argparse
import json
import sys

from bench.cli import run_main
from bench.text import format_table
from studies.objectives import OBJECTIVES, ObjectiveSettings
from studies.runner import DEFAULT_STORAGE, StudySpec, open_study, run_study
from studies.space import parse_space
from variants.errors import MbsbenchError
from variants.registry import build_config


def _choices(items: list[str]) -> dict[str, tuple]:
    """--choices d_state=8,16 -> {'d_state': (8, 16)} with the knob's type."""
    from variants.registry import parse_value

    out = {}
    for item in items:
        name, _, values = item.partition("=")
        out[name] = tuple(parse_value(name, v) for v in values.split(",") if v.strip())
    return out


def cmd_search(args: argparse.Namespace) -> str:
    if args.objective not in OBJECTIVES:
        raise MbsbenchError(f"--objective {args.objective!r}: expected one of {', '.join(OBJECTIVES)}")
    build_config(args.base)
    knobs = tuple(parse_space(args.space, _choices(args.choices)))
    uri = None
    if not args.no_track:
        from bench.tracking import check_reachable, resolve_uri

        uri = resolve_uri(args.tracking_uri)
        check_reachable(uri)
    settings = ObjectiveSettings(batch=args.batch, seconds=args.seconds, data=args.data, steps=args.steps,
                                 minutes=args.minutes, seed=args.seed)
    name = args.study_name or f"{args.base}-{args.objective}-{'-'.join(k.name for k in knobs)}"
    spec = StudySpec(name, args.storage, args.base, args.objective, knobs, settings, uri)
    counts = run_study(spec, args.trials, args.workers)
    return f"study {name!r}: {counts['added']} trials added, {counts['total']} in all\n" + show(spec)


def show(spec: StudySpec) -> str:
    """Trials by state, the best trials (the Pareto front when multi-objective), importances."""
    import optuna

    study = open_study(spec, create=False)
    states: dict[str, int] = {}
    for trial in study.trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    metrics = OBJECTIVES[study.user_attrs.get("objective", spec.objective)][0]
    best = [{"trial": t.number, **t.params, **dict(zip(metrics, t.values))} for t in study.best_trials]
    text = f"trials: {', '.join(f'{k.lower()} {v}' for k, v in sorted(states.items()))}\n"
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    text += "".join(f"  trial {t.number} failed: {t.user_attrs.get('fail_reason', 'error')}\n" for t in failed[:10])
    label = "Pareto front" if len(metrics) > 1 else "best trial"
    if best:
        text += f"{label}:\n" + format_table(best, list(best[0]), list(best[0])[1:]) + "\n"
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(complete) >= 2 and len(study.directions) == 1 and len({json.dumps(t.params) for t in complete}) > 1:
        importances = optuna.importance.get_param_importances(study)
        text += "importances: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()) + "\n"
    return text


def cmd_show(args: argparse.Namespace) -> str:
    spec = StudySpec(args.name, args.storage, "", "memory", (), ObjectiveSettings())
    return show(spec)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studies", description="Optuna studies over ModelConfig knobs")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("search", help="add trials to a study (created on first use, resumed after)")
    p.add_argument("--space", required=True, help="comma-separated knobs, e.g. d_state,chunk_size")
    p.add_argument("--choices", action="append", default=[], metavar="KNOB=A,B", help="override a knob's values")
    p.add_argument("--base", default="optimized")
    p.add_argument("--objective", default="memory", help=", ".join(OBJECTIVES))
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="journal file (default) or an RDB URL")
    p.add_argument("--study-name")
    p.add_argument("--batch", type=int, default=1, help="profile objectives: batch")
    p.add_argument("--seconds", type=float, default=1.0, help="profile objectives: seconds of audio")
    p.add_argument("--data", default="synth", help="pesq/multi objectives: dataset (validation split)")
    p.add_argument("--steps", type=int, default=200, help="pesq/multi objectives: training budget in steps")
    p.add_argument("--minutes", type=float, help="pesq/multi objectives: training budget in minutes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tracking-uri")
    p.add_argument("--no-track", action="store_true")
    p.set_defaults(func=cmd_search)
    p = sub.add_parser("show", help="best trials, Pareto front, importances")
    p.add_argument("name")
    p.add_argument("--storage", default=DEFAULT_STORAGE)
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(make_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
