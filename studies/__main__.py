"""python -m studies: create (queue once), work (run trials, anywhere), search (both, here), show."""

import argparse
from pathlib import Path

from bench.cli.common import (
    above,
    add_command,
    add_compile,
    add_device,
    add_tracking,
    at_least,
    non_negative_int,
    positive_int,
    seconds_int,
    seed_int,
    tracking_uri,
)
from bench.cli.shell import exit_now, make_root, run_main
from studies.spec import SAMPLERS, SEARCH_OBJECTIVES
from studies.storage import DEFAULT_STORAGE, StorageSettings


def _values(items: list[str], flag: str) -> dict[str, list[str]]:
    out = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep:
            from variants.errors import MbsbenchError

            raise MbsbenchError(f"{flag} {item!r}: expected KNOB={'A,B' if flag == '--choices' else 'LOW:HIGH'}")
        out[name.strip()] = [v.strip() for v in values.replace(":", ",").split(",") if v.strip()]
    return out


def _typed(items: list[str], flag: str) -> dict[str, tuple]:
    """--choices d_state=8,16 / --range d_state=4:32 -> {'d_state': (8, 16)} with the knob's type."""
    from variants.registry import parse_value

    return {name: tuple(parse_value(name, v) for v in values) for name, values in _values(items, flag).items()}


def storage_settings(args: argparse.Namespace) -> StorageSettings:
    return StorageSettings(args.storage, args.heartbeat, args.grace, args.retries)


def study_spec(args: argparse.Namespace):
    """The spec a create or search command describes, checked against ModelConfig before anything is made."""
    from dataclasses import replace

    from bench.data.datasets import spec_form
    from studies.space import check_space, parse_space
    from studies.spec import ObjectiveSettings, StudySpec, default_sampler
    from variants.registry import build_config

    spec_form(args.data)  # its folders are checked where the work runs (studies work)
    base = build_config(args.base)
    knobs = tuple(parse_space(args.space, _typed(args.choices, "--choices"), _typed(args.range, "--range")))
    check_space(base, list(knobs))
    settings = ObjectiveSettings(device="auto", batch=args.batch, seconds=args.seconds, data=args.data,
                                 steps=args.steps, minutes=args.minutes, seed=args.seed, compile=args.compile)
    name = args.study_name or f"{args.base}-{args.objective}-{'-'.join(k.name for k in knobs)}"
    spec = StudySpec(name, args.objective, "search", args.base, knobs, settings,
                     args.sampler or default_sampler(knobs), args.trials, None)
    return replace(spec, tracking_uri=tracking_uri(args))


def cmd_create(args: argparse.Namespace) -> str:
    from studies.queue import create_study

    spec = study_spec(args)
    created = create_study(spec, storage_settings(args), args.retry_failed)
    what = f"{created.queued} points queued ({created.before} before)" if spec.sampler == "grid" else \
        f"sampler {spec.sampler}, a budget of {spec.trials} trials"
    what += created.retried_text
    return f"study {spec.name!r} in {args.storage}: {what}\nstart workers: python -m studies work {spec.name} " \
           f"--storage {args.storage}"


def cmd_work(args: argparse.Namespace) -> str:
    from bench.devices import resolve_device
    from studies.trials import Worker
    from studies.worker import work

    tracking = tracking_uri(args) if args.tracking_uri else None
    from bench.interrupts import interrupt_once

    worker = Worker(resolve_device(args.device), Path(args.out), args.workers, tracking_uri=tracking,
                    max_trials=args.max_trials)
    report = work(args.name, storage_settings(args), worker, interrupt_once())
    counts = ", ".join(f"{state.lower()} {len(numbers)}" for state, numbers in sorted(report.states.items()))
    return f"study {args.name!r}: this worker ran {report.ran} trials ({counts or 'none left'})"


def cmd_search(args: argparse.Namespace) -> str:
    from bench.devices import resolve_device
    from studies.runner import Search, search
    from studies.trials import Worker

    spec = study_spec(args)
    result = search(spec, storage_settings(args), Worker(resolve_device(args.device), Path(args.out)),
                    Search(args.workers, args.retry_failed))
    states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(result.states.items()))
    head = f"study {spec.name!r}: {result.created.queued} points queued now" if spec.sampler == "grid" else \
        f"study {spec.name!r}: sampler {spec.sampler}"
    head += result.created.retried_text
    return f"{head}; trials: {states}\n" + show(spec.name, storage_settings(args))


def show(name: str, storage) -> str:
    """Trials by state, the best trials (the Pareto front when multi-objective), importances."""
    from bench.text import format_table
    from studies.queue import load_study
    from studies.runner import fail_reasons, study_importances, trial_states

    study, spec = load_study(storage, name)
    text = f"trials: {', '.join(f'{k.lower()} {v}' for k, v in sorted(trial_states(study).items()))}\n"
    text += "".join(f"  {line}\n" for line in fail_reasons(study)[:10])
    best = [{"trial": t.number, **t.params, **dict(zip(spec.metrics, t.values))} for t in study.best_trials] \
        if any(t.state.name == "COMPLETE" for t in study.trials) else []
    if best:
        label = "Pareto front" if len(spec.metrics) > 1 else "best trial"
        text += f"{label}:\n" + format_table(best, list(best[0]), list(best[0])[1:]) + "\n"
    importances = study_importances(study) if spec.kind == "search" else {}
    if importances:
        text += "importances: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()) + "\n"
    return text


def cmd_show(args: argparse.Namespace) -> str:
    settings = storage_settings(args)
    settings.require_existing()
    return show(args.name, settings)


def cmd_repair(args: argparse.Namespace) -> str:
    from studies.journal import repair_journal

    settings = StorageSettings(args.storage)
    if not settings.is_journal:
        from variants.errors import MbsbenchError

        raise MbsbenchError(f"--storage {args.storage}: repair mends journal files; a database keeps its own records")
    kept, damaged, backup = repair_journal(Path(args.storage).expanduser())
    return f"journal {args.storage}: {kept} complete records kept, {damaged} damaged lines mended or dropped; " \
           f"the journal as it was: {backup}"


def add_storage(p: argparse.ArgumentParser) -> None:
    defaults = StorageSettings()
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help=f"Optuna storage: a journal file (default {DEFAULT_STORAGE}), sqlite:///FILE or "
                        "postgresql://USER@HOST/DB (several machines)")
    p.add_argument("--heartbeat", type=seconds_int, default=defaults.heartbeat_s,
                   help=f"RDB storages: seconds between a running trial's heartbeats (default {defaults.heartbeat_s})")
    p.add_argument("--grace", type=seconds_int, default=defaults.grace_s,
                   help=f"RDB storages: seconds without a heartbeat before a trial is failed and retried "
                        f"(default {defaults.grace_s})")
    p.add_argument("--retries", type=non_negative_int, default=defaults.retries,
                   help=f"how often a crashed or interrupted trial is queued again (default {defaults.retries})")


def add_space(p: argparse.ArgumentParser) -> None:
    """The study's description: knobs, objective, sampler and the conditions of its figures."""
    p.add_argument("--space", required=True, help="comma-separated knobs, e.g. d_state,chunk_size")
    p.add_argument("--choices", action="append", default=[], metavar="KNOB=A,B",
                   help="replace a knob's values, e.g. --choices d_state=8,16 (repeatable)")
    p.add_argument("--range", action="append", default=[], metavar="KNOB=LOW:HIGH",
                   help="make a knob a range, e.g. --range d_state=4:32 (repeatable; the sampler is then tpe)")
    p.add_argument("--base", default="optimized", help="variant the knobs change (default optimized)")
    p.add_argument("--objective", default="memory", choices=SEARCH_OBJECTIVES,
                   help="what the study optimises (default memory)")
    p.add_argument("--sampler", choices=SAMPLERS, help="grid: each point once; tpe: proposals from the declared "
                                                       "ranges (default: grid when every knob is discrete)")
    p.add_argument("--trials", type=positive_int, help="grid: queue at most this many untried points; tpe: the "
                                                       "study's budget of trials")
    p.add_argument("--study-name", help="default BASE-OBJECTIVE-KNOBS")
    p.add_argument("--batch", type=positive_int, default=1, help="profile objectives: batch (default 1)")
    p.add_argument("--seconds", type=above(0.032, " s (one STFT frame)"), default=1.0,
                   help="profile objectives: seconds of audio (default 1)")
    p.add_argument("--data", default="synth", help="pesq/multi objectives: dataset (its validation split)")
    p.add_argument("--steps", type=positive_int, default=200, help="pesq/multi objectives: budget in steps "
                                                                   "(default 200)")
    p.add_argument("--minutes", type=above(0), help="pesq/multi objectives: budget in minutes")
    p.add_argument("--seed", type=seed_int, default=0, help="sampler and training seed (default 0)")
    add_compile(p, "time and pesq/multi objectives: the model under torch.compile in MODE (default, "
                   "reduce-overhead or max-autotune): compiled step times (the compiling call not among them), "
                   "compiled training; checked on each worker's device before its first trial")
    add_storage(p)
    add_tracking(p)
    p.add_argument("--retry-failed", action="store_true", help="queue again each point whose every trial failed "
                                                               "(their reasons: python -m studies show NAME)")


def make_parser() -> argparse.ArgumentParser:
    parser, sub = make_root("python -m studies", "Optuna studies over ModelConfig knobs, on one or many machines",
                              "  python -m studies search --space d_state,chunk_size --trials 40\n"
                              "  python -m studies show NAME\n  python -m studies COMMAND --help")
    p = add_command(sub, "create", "create a study and queue its points once (safe to run twice, from anywhere)",
                    "  python -m studies create --space d_state,chunk_size --objective memory --storage "
                    "postgresql://lab@db/studies --study-name mem", cmd_create)
    add_space(p)
    p = add_command(sub, "work", "run a study's trials on this machine until its queue or budget is done",
                    "  python -m studies work mem --storage postgresql://lab@db/studies --device cuda:0", cmd_work)
    p.add_argument("name", help="study name")
    add_storage(p)
    add_device(p)
    p.add_argument("--max-trials", type=positive_int, help="stop after this many trials (default: until done)")
    p.add_argument("--out", default="runs", help="ablation studies: folder for run folders (default runs)")
    p.add_argument("--workers", type=at_least(0), default=0, help="ablation studies: metric processes (default 0:"
                                                                  " one per core)")
    p.add_argument("--tracking-uri", help="MLflow store for this worker's runs (default: the study's own)")
    p = add_command(sub, "search", "create (or extend) a study and run it with local worker processes",
                    "  python -m studies search --space d_state,chunk_size --objective memory --trials 8 --workers 2\n"
                    "  python -m studies search --space d_state,expand --objective pesq --trials 20 --steps 300",
                    cmd_search)
    add_space(p)
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes on this machine (default 1)")
    add_device(p)
    p.add_argument("--out", default="runs", help="folder for run folders (default runs)")
    p = add_command(sub, "repair", "keep every complete record of a journal damaged by a write cut short",
                    "  python -m studies repair --storage studies.log", cmd_repair)
    p.add_argument("--storage", required=True, help="the journal file")
    p = add_command(sub, "show", "best trials, Pareto front, importances",
                    "  python -m studies show optimized-memory-d_state-chunk_size", cmd_show)
    p.add_argument("name", help="study name")
    add_storage(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(make_parser, argv)


if __name__ == "__main__":
    exit_now(main())
