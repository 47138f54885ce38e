"""Will it fit: a traced step replayed through the caching-allocator model, and the largest batch per card."""

from dataclasses import dataclass, replace
from functools import lru_cache

from bench.planning.allocator import CachingAllocator
from bench.planning.trace import CATEGORIES, AllocationLog, trace_step
from variants.config import ModelConfig
from variants.errors import MbsbenchError

GIB, MIB = 2**30, 2**20
# what a card has for tensors: its memory less the CUDA context and library workspaces (cuBLAS, cuDNN), which
# PyTorch's caching allocator never sees. 0.5 GiB is an estimate for recent drivers (the context alone takes
# 0.3-0.4 GiB); `python -m bench.doctor` on a GPU measures the card's own (outside_pool_bytes)
CONTEXT_BYTES = GIB // 2
CARDS = {"12": 12 * GIB, "16": 16 * GIB, "24": 24 * GIB, "40": 40 * GIB, "48": 48 * GIB, "80": 80 * GIB,
         "RTX3090": 24 * GIB, "RTX4090": 24 * GIB, "A100": 80 * GIB, "H100": 80 * GIB, "H200": 141 * 10**9}
PLANNED_SCANS = ("triton", "chunked_ckpt", "chunked", "naive")  # 'cuda' (mamba_ssm's kernel) has no fake form


@dataclass(frozen=True)
class Replay:
    """A traced step's figures: the allocator model's peaks, the live-tensor peak, and what is live at the peak."""

    peak_allocated: int
    peak_reserved: int
    peak_live: int  # bytes of live tensors, no allocator: what `bench profile --device cpu` measures
    at_peak: dict[str, int]  # category -> allocated bytes at the allocated peak
    segments: int


def replay(log: AllocationLog) -> Replay:
    """Every allocation and free of the log through the allocator model; peaks of the measured step only."""
    allocator, blocks, sizes = CachingAllocator(), {}, {}
    live = peak_live = 0
    at_peak: dict[str, int] = {}
    for index, (kind, key, nbytes, _) in enumerate(log.events):
        if index == log.measured_from:
            allocator.reset_peaks()
            peak_live = live
        if kind == "alloc":
            blocks[key], sizes[key] = allocator.malloc(nbytes), nbytes
            live += nbytes
        elif key in blocks:
            allocator.free(blocks.pop(key))
            live -= sizes.pop(key)
        if index >= log.measured_from:
            peak_live = max(peak_live, live)
            if allocator.allocated == allocator.peak_allocated:
                at_peak = {}
                for held, block in blocks.items():
                    name = log.category.get(held, CATEGORIES[-1])
                    at_peak[name] = at_peak.get(name, 0) + block.size
    return Replay(allocator.peak_allocated, allocator.peak_reserved, peak_live, at_peak, allocator.segments)


def planned_config(cfg: ModelConfig, scan: str) -> ModelConfig:
    """The config with the scan a CUDA run would use ('auto': the Triton kernels, as on a GPU without mamba_ssm)."""
    name = "triton" if scan == "auto" else scan
    if name not in PLANNED_SCANS:
        raise MbsbenchError(f"--scan {scan!r}: cannot be traced without its GPU (mamba_ssm's kernel has no fake "
                            f"form); expected one of auto, {', '.join(PLANNED_SCANS)}")
    return replace(cfg, scan=name)


@lru_cache(maxsize=256)
def replayed(cfg: ModelConfig, batch: int, seconds: float, mode: str, dtype: str) -> Replay:
    """replay(trace_step(...)), once per distinct step: a plan and its max-batch search share traces."""
    return replay(trace_step(cfg, batch, seconds, mode, dtype))


def plan(cfg: ModelConfig, batch: int, seconds: float, dtype: str = "float32") -> dict:
    """Predicted CUDA figures of one training step and one inference step of `cfg` at (batch, seconds)."""
    train, infer = (replayed(cfg, batch, seconds, mode, dtype) for mode in ("train", "infer"))
    row = {"batch": batch, "seconds": seconds, "dtype": dtype, "scan": cfg.scan,
           "pred_cuda_peak_alloc_mib": train.peak_allocated / MIB,
           "pred_cuda_peak_reserved_mib": train.peak_reserved / MIB,
           "pred_infer_peak_alloc_mib": infer.peak_allocated / MIB,
           "pred_infer_peak_reserved_mib": infer.peak_reserved / MIB,
           "live_peak_train_mib": train.peak_live / MIB, "segments": train.segments}
    return row | {f"at_peak_{name.replace(' ', '_')}_mib": train.at_peak.get(name, 0) / MIB for name in CATEGORIES}


def predicted_cuda(cfg: ModelConfig, settings) -> dict:
    """A profile's predicted CUDA figures (ProfileSettings: batch, seconds, dtype, budget_gb), Triton's scan."""
    planned = planned_config(cfg, "auto")
    row = plan(planned, settings.batch, settings.seconds, settings.dtype)
    budget = int(settings.budget_gb * GIB) + CONTEXT_BYTES  # the budget is what tensors may take
    return {"pred_cuda_peak_alloc_mib": row["pred_cuda_peak_alloc_mib"],
            "pred_cuda_peak_reserved_mib": row["pred_cuda_peak_reserved_mib"],
            "pred_max_batch_cuda": max_batch(planned, settings.seconds, budget, settings.dtype)}


def card_bytes(card: str) -> int:
    if card not in CARDS:
        raise MbsbenchError(f"--card {card!r}: expected one of {', '.join(CARDS)}")
    return CARDS[card]


def reserved_bytes(cfg: ModelConfig, batch: int, seconds: float, dtype: str = "float32") -> int:
    """The predicted reserved peak of a training step."""
    return replayed(cfg, batch, seconds, "train", dtype).peak_reserved


def fits(cfg: ModelConfig, batch: int, seconds: float, card: int, dtype: str = "float32") -> bool:
    """Whether a training step's predicted reserved peak and the fixed costs fit in a card of `card` bytes."""
    return reserved_bytes(cfg, batch, seconds, dtype) + CONTEXT_BYTES <= card


def max_batch(cfg: ModelConfig, seconds: float, card: int, dtype: str = "float32") -> int:
    """The largest training batch predicted to fit on the card (0: not even one utterance).

    Memory grows about linearly with the batch: secant steps from batches 1 and 2 land near the answer,
    then traces gallop away from it until it is bracketed and bisect: about 10 traces, not 25.
    """
    room = card - CONTEXT_BYTES
    known: dict[int, int] = {}

    def reserved(batch: int) -> int:
        if batch not in known:
            known[batch] = reserved_bytes(cfg, batch, seconds, dtype)
        return known[batch]

    if reserved(1) > room:
        return 0
    (b0, r0), b1 = (1, reserved(1)), 2
    for _ in range(4):  # secant steps on reserved(batch) = room
        r1 = reserved(b1)
        guess = max(1, b1 + int((room - r1) * (b1 - b0) // max(r1 - r0, 1)))
        if guess == b1:
            break
        (b0, r0), b1 = (b1, r1), guess
    return _bracket(b1, lambda batch: reserved(batch) <= room)


def _bracket(guess: int, fit) -> int:
    """The largest batch for which fit() holds (fit(1) does, and it holds below any batch it holds for)."""
    step = 1
    if fit(guess):
        low = guess
        while fit(low + step):
            low, step = low + step, step * 2
        high = low + step
    else:
        high = guess
        while not fit(max(1, high - step)):
            high, step = max(1, high - step), step * 2
        low = max(1, high - step)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fit(middle) else (low, middle)
    return low


def frontier(cfg: ModelConfig, lengths: tuple[float, ...], cards: dict[str, int], dtype: str = "float32") -> list[dict]:
    """The batch x length frontier: per utterance length, the largest training batch predicted to fit each card."""
    return [{"seconds": seconds} | {f"pred_max_batch_{card}": max_batch(cfg, seconds, total, dtype)
                                    for card, total in cards.items()} for seconds in lengths]
