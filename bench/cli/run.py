"""`bench run` and `bench ablate`: flags -> RunRequest and RunContext -> run_experiment -> a summary table."""

import argparse
import json

from bench.cli.common import (
    DATA_HELP,
    MAX_SEED,
    above,
    add_command,
    add_compile,
    add_device,
    add_dnsmos,
    add_format,
    add_set,
    add_tracking,
    add_workers,
    comma_list,
    names,
    positive_int,
    tracking_uri,
)
from bench.cli.measure import profile_named
from variants.config import CHOICES

SCAN_CHOICES = (*CHOICES["scan"], "keep")


def run_request(args: argparse.Namespace, variants: list[str], parent_name: str | None = None):
    from pathlib import Path

    from bench.training.request import RunRequest
    from variants.registry import parse_overrides

    return RunRequest(
        variants=tuple(variants), seeds=tuple(args.seeds), data=args.data, overrides=parse_overrides(args.set),
        scan=args.scan, epochs=args.epochs, steps=args.steps, minutes=args.minutes, batch=args.batch,
        crop_seconds=args.crop_seconds, lr=args.lr, phase_loss=args.phase_loss, precision=args.precision,
        metricgan=args.metricgan, recipe=args.recipe, val_every=args.val_every,
        checkpoint_every=args.checkpoint_every, out=Path(args.out), resume=args.resume, overwrite=args.overwrite,
        skip_finished=parent_name is not None, parent_name=parent_name, dnsmos=bool(args.dnsmos),
        compile=args.compile)


def run_context(args: argparse.Namespace):
    """Device, store and ranks: under torchrun, this rank's device in the process group (rank 0 logs)."""
    from bench.devices import resolve_device
    from bench.training import distributed
    from bench.training.request import RunContext

    ranks = distributed.from_environment()
    device = distributed.start(ranks, resolve_device(args.device))
    return RunContext(device, tracking_uri(args) if ranks.main else None, args.workers, ranks)


def train(args: argparse.Namespace, variants: list[str], parent_name: str | None = None):
    """Check everything (names and fields before torch is even imported), then run the experiment."""
    from bench.compiling import check_compile
    from bench.data.datasets import check_spec
    from bench.devices import resolve_device
    from bench.training import distributed
    from bench.training.request import check_request

    request = run_request(args, variants, parent_name)
    check_compile(request.compile, resolve_device(args.device))  # before check_request makes the output folder
    check_request(request, check_spec)
    if request.dnsmos:
        from bench.quality.dnsmos import require_dnsmos

        require_dnsmos()
    context = run_context(args)  # the device, and the tracking store reached and usable
    from bench.training.experiment import run_experiment

    try:
        return run_experiment(request, context)
    except RuntimeError as err:
        distributed.stop_on_lost_peer(err, context.ranks)
        raise
    finally:
        distributed.stop()


def _render(outcome, fmt: str) -> str:
    """The result table (or JSON), then each run's recipe, where its results went and the next command (on
    stderr under --format json, so that stdout parses); warnings on stderr."""
    from bench.console import status, warn
    from bench.text import format_table
    from bench.tracking.schema import RUN_COLUMNS

    if outcome.noisy is None:  # a rank other than 0: rank 0 prints the table
        return ""
    rows = outcome.rows()
    lines, warnings = outcome.closing()
    for line in warnings:
        warn(line)
    if fmt == "json":
        for line in lines:
            status(line)
        return json.dumps(rows, indent=2, default=str)
    table = format_table(rows, RUN_COLUMNS, RUN_COLUMNS[3:])
    return "\n".join(["test split, full utterances; mean over utterances", table, "", *lines])


def cmd_run(args: argparse.Namespace) -> str:
    import os

    if args.nproc is not None and "WORLD_SIZE" not in os.environ:
        return _relaunch(args)
    return _render(train(args, [args.variant]), args.format)


def _relaunch(args: argparse.Namespace) -> str:
    """`bench run --nproc G`: the same command as G ranks on this machine (checked here first); their exit code
    is ours."""
    from bench.devices import resolve_device
    from bench.training.distributed import launch_ranks
    from bench.training.experiment import check_before_launch

    request = run_request(args, [args.variant])
    # here, once: not one error per rank
    check_before_launch(request, tracking_uri(args), resolve_device(args.device), args.nproc)
    argv = list(args.argv)
    at = next(i for i, a in enumerate(argv) if a == "--nproc" or a.startswith("--nproc="))
    del argv[at : at + (1 if "=" in argv[at] else 2)]
    code = launch_ranks(args.nproc, argv)
    if code:
        raise SystemExit(code)
    return ""


def cmd_ablate(args: argparse.Namespace) -> str:
    from variants.registry import single_change_names

    variants = [args.base, *single_change_names(args.base, list(args.changes) if args.changes else None)]
    _check_queue_flags(args)
    if args.queue:
        return _queue(variants, args)
    if args.profile_only:
        return _ablate_profile(variants, args)
    return _render(train(args, variants, f"ablate {args.base}"), args.format)


def _check_queue_flags(args: argparse.Namespace) -> None:
    """Queue flags only with --queue; with it, no flag a worker would ignore (its folder is its own)."""
    from variants.errors import MbsbenchError

    typed = {a.split("=")[0] for a in args.argv if a.startswith("--")}
    stray = sorted(typed & {"--study-name", "--retry-failed"}) if args.queue is None else []
    ignored = sorted(typed & {"--out", "--resume", "--overwrite"}) if args.queue is not None else []
    if stray:
        raise MbsbenchError(f"{stray[0]}: only with --queue STORAGE")
    if ignored:
        raise MbsbenchError(f"{ignored[0]} with --queue: each worker chooses its own (python -m studies work NAME "
                            "--out FOLDER resumes its run folders); leave it out here")


def _queue(variants: list[str], args: argparse.Namespace) -> str:
    """Enqueue the (variant, seed) pairs as trials of one study; `python -m studies work` drains it.

    The one place bench hands work to studies (the queue is an Optuna study): only this CLI shell does.
    """
    from dataclasses import asdict

    from bench.data.datasets import spec_form
    from bench.training.request import resolve_configs, train_settings
    from studies.queue import ablation_spec, create_study
    from studies.storage import StorageSettings

    request = run_request(args, variants, None)
    resolve_configs(request)
    spec_form(request.data)  # its folders are checked where the work runs (studies work)
    for seed in request.seeds:
        train_settings(request, request.data, seed)
    profile = asdict(_profile_settings(args, "cpu")) if args.profile_only else None
    name = args.study_name or f"ablate-{args.base}{'-profile' if args.profile_only else ''}"
    spec = ablation_spec(name, request, profile, tracking_uri(args))
    created = create_study(spec, StorageSettings(args.queue, flag="--queue"), args.retry_failed)
    return (f"study {name!r} in {args.queue}: {created.queued} (variant, seed) pairs queued ({created.before} "
            f"before){created.retried_text}\nstart workers: python -m studies work {name} --storage {args.queue}")


def _ablate_profile(variants: list[str], args: argparse.Namespace) -> str:
    """Profile each variant at (batch, crop) without training, one MLflow profile run each."""
    from bench.compiling import check_compile
    from bench.devices import resolve_device
    from variants.registry import parse_overrides

    settings = _profile_settings(args, resolve_device(args.device))
    check_compile(settings.compile, settings.device)
    return profile_named(variants, parse_overrides(args.set), settings, tracking_uri(args), args.format)


def _profile_settings(args: argparse.Namespace, device: str):
    """An ablation's profile conditions: --batch (default 1) and --crop-seconds (default 1) as batch and length."""
    from bench.profiling.workload import ProfileSettings

    batch = args.batch if args.batch is not None else 1
    seconds = args.crop_seconds if args.crop_seconds is not None else 1.0
    return ProfileSettings(batch=batch, seconds=seconds, device=device, repeats=2, rss=False, compile=args.compile)


def add_training_flags(p: argparse.ArgumentParser) -> None:
    """Data, budget, recipe, device, outputs: what run and ablate share."""
    p.add_argument("--data", default="synth", help=f"dataset: {DATA_HELP} (default synth)")
    p.add_argument("--epochs", type=positive_int, help="training budget in epochs")
    p.add_argument("--steps", type=positive_int, help="training budget in optimizer steps (wins over --epochs)")
    p.add_argument("--minutes", type=above(0), help="training budget in minutes of training")
    p.add_argument("--seeds", type=comma_list(int, 0, MAX_SEED), default=(0,), help="comma-separated seeds (default 0)")
    p.add_argument("--batch", type=positive_int, help="utterances per step (default 6; synth default budget: 4)")
    p.add_argument("--crop-seconds", type=above(0.032, " s (one STFT frame)"),
                   help="training crop in seconds (default 2; synth default budget: 1)")
    p.add_argument("--lr", type=above(0), default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--phase-loss", action="store_true", help="add the phase term (dual mag/phase decoder only)")
    p.add_argument("--recipe", choices=("default", "reference"), default="default",
                   help="reference: the reference's recipe (batch 6, 2 s crops, MetricGAN, 120 epochs unless a "
                        "budget is given); default: as the flags say")
    p.add_argument("--metricgan", action=argparse.BooleanOptionalAction, default=None,
                   help="the MetricGAN term from half-way through the budget (default: on for --recipe reference)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp64"), default="fp32",
                   help="fp32; bf16 under autocast for training and inference; fp64: the whole model in float64, "
                        "for exactness checks (default fp32)")
    p.add_argument("--val-every", type=positive_int, help="steps between validations, and at each epoch's end "
                                                          "(default 50; synth default budget: 100)")
    p.add_argument("--checkpoint-every", type=positive_int, help="steps between resumable checkpoints (last.pt; "
                                                                 "default 50; synth default budget: 100)")
    add_device(p)
    add_set(p)
    add_compile(p, "train under torch.compile (inductor) in MODE: default, reduce-overhead (CUDA graphs) or "
                   "max-autotune; validation compiled too where one graph serves every length (the triton and cuda "
                   "scans), else eager; step 0's time, compilation included, is train_first_step_s. With "
                   "--profile-only: the steps timed eager and compiled")
    p.add_argument("--scan", default="auto", choices=SCAN_CHOICES,
                   help="scan for training (default auto: the fastest exact one here); keep: each variant's own;"
                        " --set scan=... wins")
    add_workers(p)
    add_dnsmos(p)
    p.add_argument("--out", default="runs", help="folder for checkpoints and CSVs (default runs)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/VARIANT-seedS/last.pt, in the same "
                                                         "MLflow run")
    p.add_argument("--overwrite", action="store_true", help="start over a run folder that holds a run already")
    add_tracking(p)
    add_format(p)


def add_run_commands(sub) -> None:
    """Register run and ablate."""
    p = add_command(sub, "run", "train a variant on a budget, evaluate it on the test split, log it",
                    "  python -m bench run --variant optimized\n"
                    "  python -m bench run --variant optimized --data vbd:~/vbd --epochs 100 --seeds 0,1,2 "
                    "--device cuda\n  python -m bench run --variant optimized --resume\n"
                    "  torchrun --standalone --nproc_per_node=8 -m bench run --variant original --data vbd:~/vbd "
                    "--recipe reference --precision bf16", cmd_run)
    p.add_argument("--variant", required=True, help="registered name, e.g. original+expand1 (python -m bench list)")
    p.add_argument("--nproc", type=positive_int, help="train with this many data-parallel processes here "
                                                      "(checked once, then started with torchrun's environment; a GPU "
                                                      "each on CUDA)")
    add_training_flags(p)
    p = add_command(sub, "ablate", "every single change of a base: trained and evaluated, or only profiled",
                    "  python -m bench ablate --base original --profile-only\n"
                    "  python -m bench ablate --base optimized --changes d_state12,expand1 --seeds 0,1", cmd_ablate)
    p.add_argument("--base", required=True, choices=("original", "optimized"),
                   help="original (each change added) or optimized (each change taken back)")
    p.add_argument("--changes", type=names, help="comma-separated subset of the eight changes (default all)")
    p.add_argument("--profile-only", action="store_true",
                   help="profile each variant at --batch (default 1) and --crop-seconds (default 1), no training")
    p.add_argument("--queue", metavar="STORAGE", help="enqueue the (variant, seed) pairs as trials of one study in "
                                                      "this Optuna storage, for `python -m studies work` on any "
                                                      "machine, instead of running them here")
    p.add_argument("--study-name", help="with --queue: the study (default ablate-BASE[-profile])")
    p.add_argument("--retry-failed", action="store_true", help="with --queue: queue again each pair whose every "
                                                               "trial failed (reasons: python -m studies show NAME)")
    add_training_flags(p)
