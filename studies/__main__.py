"""python -m studies: search (add trials to a study) and show (best trials, Pareto front, importances)."""

import argparse
import sys

from bench.cli.common import above, add_command, add_device, add_tracking, non_negative_int, positive_int
from bench.cli.shell import make_root, run_main
from studies.objectives import OBJECTIVES
from studies.runner import DEFAULT_STORAGE


def _choices(items: list[str]) -> dict[str, tuple]:
    """--choices d_state=8,16 -> {'d_state': (8, 16)} with the knob's type."""
    from variants.registry import parse_value

    out = {}
    for item in items:
        name, _, values = item.partition("=")
        out[name] = tuple(parse_value(name, v) for v in values.split(",") if v.strip())
    return out


def cmd_search(args: argparse.Namespace) -> str:
    from bench.cli.measure import tracking_uri
    from bench.devices import resolve_device
    from studies.objectives import ObjectiveSettings
    from studies.runner import StudySpec, run_study
    from studies.space import parse_space
    from variants.registry import build_config

    build_config(args.base)
    knobs = tuple(parse_space(args.space, _choices(args.choices)))
    uri = tracking_uri(args)
    settings = ObjectiveSettings(device=resolve_device(args.device), batch=args.batch, seconds=args.seconds,
                                 data=args.data, steps=args.steps, minutes=args.minutes, seed=args.seed)
    name = args.study_name or f"{args.base}-{args.objective}-{'-'.join(k.name for k in knobs)}"
    spec = StudySpec(name, args.storage, args.base, args.objective, knobs, settings, uri)
    counts = run_study(spec, args.trials, args.workers)
    return f"study {name!r}: {counts['added']} trials added, {counts['total']} in all\n" + show(spec)


def show(spec) -> str:
    """Trials by state, the best trials (the Pareto front when multi-objective), importances."""
    from bench.text import format_table
    from studies.runner import open_study, study_importances

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
    importances = study_importances(study)
    if importances:
        text += "importances: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()) + "\n"
    return text


def cmd_show(args: argparse.Namespace) -> str:
    from studies.objectives import ObjectiveSettings
    from studies.runner import StudySpec

    return show(StudySpec(args.name, args.storage, "", "memory", (), ObjectiveSettings()))


def add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help=f"Optuna storage: a journal file (default {DEFAULT_STORAGE}), sqlite:///FILE or "
                        "postgresql://...")


def make_parser() -> argparse.ArgumentParser:
    parser, sub = make_root("python -m studies", "Optuna studies over ModelConfig knobs")
    p = add_command(sub, "search", "add trials to a study (created on first use, resumed after)",
                    "  python -m studies search --space d_state,chunk_size --objective memory --trials 8 --workers 2\n"
                    "  python -m studies search --space d_state,expand --objective pesq --trials 20 --steps 300",
                    cmd_search)
    p.add_argument("--space", required=True, help="comma-separated knobs, e.g. d_state,chunk_size")
    p.add_argument("--choices", action="append", default=[], metavar="KNOB=A,B",
                   help="replace a knob's values, e.g. --choices d_state=8,16 (repeatable)")
    p.add_argument("--base", default="optimized", help="variant the knobs change (default optimized)")
    p.add_argument("--objective", default="memory", choices=tuple(OBJECTIVES), help="what the study optimises "
                                                                                  "(default memory)")
    p.add_argument("--trials", type=positive_int, default=20, help="trials to add (default 20)")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes on this machine (default 1)")
    add_storage(p)
    p.add_argument("--study-name", help="default BASE-OBJECTIVE-KNOBS")
    add_device(p)
    p.add_argument("--batch", type=positive_int, default=1, help="profile objectives: batch (default 1)")
    p.add_argument("--seconds", type=above(0.032, " s (one STFT frame)"), default=1.0,
                   help="profile objectives: seconds of audio (default 1)")
    p.add_argument("--data", default="synth", help="pesq/multi objectives: dataset (its validation split)")
    p.add_argument("--steps", type=positive_int, default=200, help="pesq/multi objectives: budget in steps "
                                                                   "(default 200)")
    p.add_argument("--minutes", type=above(0), help="pesq/multi objectives: budget in minutes")
    p.add_argument("--seed", type=non_negative_int, default=0, help="sampler and training seed (default 0)")
    add_tracking(p)
    p = add_command(sub, "show", "best trials, Pareto front, importances",
                    "  python -m studies show optimized-memory-d_state-chunk_size", cmd_show)
    p.add_argument("name", help="study name")
    add_storage(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(make_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
