"""`bench plan`: will a training step fit on a CUDA card, predicted on any machine (no GPU)."""

import argparse
import json
from pathlib import Path

from bench.cli.common import above, add_command, add_format, add_variant, comma_list, names, positive_int

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def cmd_plan(args: argparse.Namespace) -> str:
    from bench.planning.plan import CONTEXT_BYTES, MIB, card_bytes, max_batch, plan, planned_config
    from variants.errors import MbsbenchError
    from variants.registry import build_config, parse_overrides

    if (args.lengths or args.plot) and not args.card:
        raise MbsbenchError(f"--{'lengths' if args.lengths else 'plot'}: the frontier is per card; give --card too")
    if args.plot and not args.lengths:
        raise MbsbenchError("--plot: draws the frontier; give the utterance lengths with --lengths")
    cards = {card: card_bytes(card) for card in args.card}  # an unknown card is refused before any trace
    base = build_config(args.variant, **parse_overrides(args.set))
    checked = _checked_config(args, base)
    cfg = planned_config(base, args.scan)
    dtype = DTYPES[args.precision]
    row = {"variant": args.variant} | plan(cfg, args.batch, args.seconds, dtype)
    for card, total in cards.items():
        need = row["pred_cuda_peak_reserved_mib"] * MIB + CONTEXT_BYTES
        row[f"fits_{card}"] = need <= total
        row[f"pred_max_batch_{card}"] = max_batch(cfg, args.seconds, total, dtype)
    frontier = _frontier(args, cfg, cards, dtype)
    if checked is not None:
        from bench.console import status
        from bench.planning.verify import cpu_check

        status(f"--verify: running the training step on real CPU tensors (scan {checked.scan})")
        row |= cpu_check(checked, args.batch, args.seconds)
    if args.format == "json":
        return json.dumps(row | ({"frontier": frontier} if frontier else {}), indent=2)
    return _plan_text(args, row, cfg.scan, frontier)


def _plan_text(args: argparse.Namespace, row: dict, scan: str, frontier: list[dict]) -> str:
    """The plan as a figure table under its conditions, a verdict per card, the CPU check and the frontier."""
    from bench.planning.plan import CONTEXT_BYTES, MIB
    from bench.text import figure_table, format_table

    head = (f"{args.variant}, batch {args.batch} x {args.seconds:g} s, {args.precision}, scan {scan}: predicted "
            "CUDA figures of one training step (traced on fake tensors; the allocator is modelled, nothing ran on "
            f"a GPU); a card holds tensors in its memory less {CONTEXT_BYTES / MIB:.0f} MiB of CUDA context")
    lines = [head, figure_table(row, ",.1f")]
    for card in args.card:
        verdict = "fits" if row[f"fits_{card}"] else "does not fit"
        lines.append(f"card {card}: {verdict} at batch {args.batch}; largest batch predicted to fit: "
                     f"{row[f'pred_max_batch_{card}']}")
    if "verify_scan" in row:
        lines.append(f"checked on this CPU (scan {row['verify_scan']}, float32): the traced live-tensor peak "
                     f"{row['traced_live_peak_mib']:,.1f} MiB vs {row['measured_live_peak_mib']:,.1f} MiB measured on "
                     f"real tensors, {row['verify_error_pct']:+.2f}%")
    if frontier:
        lines += ["largest batch predicted to fit, per utterance length (the batch x length frontier):",
                  format_table(frontier, list(frontier[0]), list(frontier[0]))]
    return "\n".join(lines)


def _checked_config(args: argparse.Namespace, base):
    """The config --verify runs on the CPU (None without --verify); refused before any trace."""
    from bench.planning.verify import require_room, verified_config
    from variants.errors import MbsbenchError

    if not args.verify:
        return None
    if args.precision != "fp32":
        raise MbsbenchError(f"--verify: checks float32 steps on the CPU; --precision {args.precision} is planned only")
    checked = verified_config(base, args.scan)
    require_room(checked, args.batch, args.seconds)  # before the plan's traces: a refusal costs one trace
    return checked


def _frontier(args: argparse.Namespace, cfg, cards: dict[str, int], dtype: str) -> list[dict]:
    """The frontier rows for --lengths, drawn to --plot when asked (the path is printed)."""
    from bench.console import status
    from bench.planning.plan import frontier

    if not args.lengths:
        return []
    rows = frontier(cfg, args.lengths, cards, dtype)
    if args.plot:
        from bench.planning.frontier_plot import plot_frontier

        title = f"{args.variant}, {args.precision}, scan {cfg.scan}: predicted (traced, no GPU)"
        status(f"wrote {plot_frontier(rows, title, args.plot)}")
    return rows


def add_plan_command(sub) -> None:
    p = add_command(sub, "plan", "will it fit on my GPU: predicted CUDA peaks and max batch, without a GPU",
                    "  python -m bench plan --variant original --batch 2 --seconds 2 --card 12\n"
                    "  python -m bench plan --variant optimized --card 24,H100 --format json\n"
                    "  python -m bench plan --variant original --card 12,24 --lengths 1,2,4 --plot frontier.png\n"
                    "  python -m bench plan --variant optimized --batch 4 --seconds 1 --verify",
                    cmd_plan)
    add_variant(p)
    p.add_argument("--batch", type=positive_int, default=6, help="utterances per step (default 6)")
    p.add_argument("--seconds", type=above(0.032, " s (one STFT frame)"), default=2.0,
                   help="seconds of audio per utterance (default 2)")
    p.add_argument("--scan", default="auto", help="the scan of the CUDA run: auto (the Triton kernels), triton, "
                                                  "chunked_ckpt, chunked or naive (default auto)")
    p.add_argument("--precision", choices=tuple(DTYPES), default="fp32", help="fp32 or bf16 autocast (default fp32)")
    p.add_argument("--card", type=names, default=(), help="comma-separated cards to fit: memory in GB (12, 16, 24, "
                                                          "40, 48, 80) or RTX3090, RTX4090, A100, H100, H200")
    p.add_argument("--lengths", type=comma_list(float, 0.033),
                   help="comma-separated seconds per utterance: the largest batch for each card at each length "
                        "(the batch x length frontier)")
    p.add_argument("--plot", type=Path, help="write the frontier as a plot to this file (.png, .pdf or .svg)")
    p.add_argument("--verify", action="store_true",
                   help="also run the training step on this CPU's real tensors and set its measured live-tensor "
                        "peak beside the traced one (the tracer's check; needs the step's memory in RAM and swap)")
    add_format(p)
