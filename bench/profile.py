"""`bench profile`: parameters, MACs per second of audio, peak memory, max batch and throughput."""

import json
import multiprocessing
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from bench.devices import device_name
from bench.measure import MIB, LiveTensorPeak, cuda_peak_bytes, time_call
from variants.config import ModelConfig
from variants.errors import MbsbenchError
from variants.layers import SelectiveSSM
from variants.registry import build_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SSM_CHILDREN = ("conv1d", "x_proj_dt", "dt_proj", "B_proj", "C_proj")
OOM_MARKERS = ("out of memory", "can't allocate memory", "DefaultCPUAllocator")
CPU_MEMORY_SHARE = 0.7  # a CPU measurement predicted above this share of available RAM is skipped


@dataclass(frozen=True)
class ProfileSettings:
    """Conditions of one profile: batch, seconds of audio per utterance, device, dtype, budget."""

    batch: int = 6
    seconds: float = 2.0
    device: str = "cpu"
    dtype: str = "float32"
    budget_gb: float = 12.0
    lengths: tuple[float, ...] = ()
    repeats: int = 3
    warmup: int = 1
    rss: bool = True

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise MbsbenchError(f"--batch {self.batch}: expected a positive integer")
        for seconds in (self.seconds, *self.lengths):
            if not seconds > 0.032:
                raise MbsbenchError(f"length {seconds} s: expected more than one STFT frame (0.032 s)")
        if self.dtype not in DTYPES:
            raise MbsbenchError(f"--dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if not self.budget_gb > 0:
            raise MbsbenchError(f"--budget-gb {self.budget_gb}: expected a positive number")
        if self.repeats < 1:
            raise MbsbenchError(f"--repeats {self.repeats}: expected a positive integer")


class MemoryExceededError(Exception):
    """A measurement that did not fit, real (allocator error) or predicted (CPU)."""


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError | MemoryError) or any(m in str(err) for m in OOM_MARKERS)


def samples(cfg: ModelConfig, seconds: float) -> int:
    return round(seconds * cfg.sample_rate)


@contextmanager
def flop_counter() -> Iterator[FlopCounterMode]:
    """FlopCounterMode under no_grad with oneDNN off (else LSTMs are not counted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # oneDNN's flag setter warns about Intel GPUs
        with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as counter:
            yield counter


def matmul_macs(run: Callable[[], object]) -> int:
    """MACs of the matmuls, convolutions and LSTMs in run()."""
    with flop_counter() as counter:
        run()
    return counter.get_total_flops() // 2


def count_macs(model: nn.Module, cfg: ModelConfig, seconds: float, device: str) -> dict[str, float]:
    """MACs per second of audio (batch 1): matmul/conv/LSTM from FlopCounterMode, the scan by formula.

    The scan's own readout einsum, which the counter sees inside each SSM, is moved from the
    matmul column to the formula column.
    """
    shapes: list[tuple[int, int, int, int]] = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: shapes.append((*args[0].shape, mod.A_log.shape[1])))
        for m in model.modules() if isinstance(m, SelectiveSSM)
    ]
    wav = torch.randn(1, samples(cfg, seconds), device=device)
    with flop_counter() as counter:
        model(wav)
    for hook in hooks:
        hook.remove()
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    scan_counted = 0
    for name in [n for n in per_module if n.endswith(".ssm") and n.startswith(root + ".")]:
        scan_counted += per_module[name] - sum(per_module.get(f"{name}.{c}", 0) for c in SSM_CHILDREN)
    matmul = (counter.get_total_flops() - scan_counted) / 2
    # per (b, l, d, n): delta*A, (delta*u)*B, the state update and the readout; plus D*u per (b, l, d)
    scan = sum(4 * b * steps * d * n + b * steps * d for b, steps, d, n in shapes)
    return {
        "matmul_macs_g_per_s": matmul / seconds / 1e9,
        "scan_macs_g_per_s": scan / seconds / 1e9,
        "macs_g_per_s": (matmul + scan) / seconds / 1e9,
    }


def _autocast(device: str, dtype: str):
    return torch.autocast(torch.device(device).type, dtype=DTYPES[dtype], enabled=dtype != "float32")


def training_step(model: nn.Module, wav: Tensor, optimizer: torch.optim.Optimizer, dtype: str = "float32") -> None:
    """Forward, L1 loss against the input, backward, optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    with _autocast(str(wav.device), dtype):
        loss = (model(wav).float() - wav).abs().mean()
    loss.backward()
    optimizer.step()


def inference_step(model: nn.Module, wav: Tensor, dtype: str = "float32") -> None:
    """One no-grad forward pass."""
    with torch.no_grad(), _autocast(str(wav.device), dtype):
        model(wav)


@dataclass
class Workload:
    """A model, its optimizer (state created) and an input batch on a device."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    wav: Tensor
    dtype: str

    def train(self) -> None:
        training_step(self.model, self.wav, self.optimizer, self.dtype)

    def infer(self) -> None:
        inference_step(self.model, self.wav, self.dtype)

    def fixed_bytes(self) -> int:
        """Bytes that do not grow with the batch: parameters, their gradients, optimizer state."""
        tensors = [t for t in self.resident() if t is not self.wav]
        tensors += [p.grad for p in self.model.parameters() if p.grad is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def resident(self) -> list[Tensor]:
        state = [t for s in self.optimizer.state.values() for t in s.values() if isinstance(t, Tensor)]
        return [*self.model.parameters(), *state, self.wav]


def make_workload(model: nn.Module, cfg: ModelConfig, batch: int, seconds: float, device: str, dtype: str) -> Workload:
    model.train()
    for p in model.parameters():
        p.grad = None
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-9)  # tiny steps: the weights barely move
    wav = torch.randn(batch, samples(cfg, seconds), device=device) * 0.1
    return Workload(model, optimizer, wav, dtype)


def peak_bytes(run: Callable[[], None], resident: list[Tensor], device: str) -> int:
    """Peak bytes of one call: CUDA allocator peak, or peak live tensor bytes on CPU (resident counted)."""
    if torch.device(device).type == "cuda":
        return cuda_peak_bytes(run, device)
    with LiveTensorPeak(baseline=resident) as live:
        run()
    return live.peak_bytes


def available_bytes() -> int:
    """MemAvailable of this machine (Linux), or a large number elsewhere."""
    try:
        with open("/proc/meminfo") as info:
            line = next(line for line in info if line.startswith("MemAvailable"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return 2**62


def _release(device: str) -> None:
    import gc

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


class MemoryCurve:
    """Peak bytes of training and inference steps at (batch, seconds) points, with OOMs as results."""

    def __init__(self, model: nn.Module, cfg: ModelConfig, settings: ProfileSettings):
        self.model, self.cfg, self.settings = model, cfg, settings
        self.points: list[dict] = []

    def _predict(self, units: int, mode: str) -> None:
        done = [p for p in self.points if p["mode"] == mode and p["status"] == "ok"]
        if torch.device(self.settings.device).type == "cuda" or not done:
            return
        per_unit = max(p["peak_bytes"] / p["units"] for p in done)
        predicted, limit = per_unit * units, CPU_MEMORY_SHARE * available_bytes()
        if predicted > limit:
            raise MemoryExceededError(f"predicted {predicted / 2**30:.1f} GiB > {limit / 2**30:.1f} GiB of free RAM")

    def measure(self, batch: int, seconds: float, mode: str = "train") -> dict:
        """Measure (or predict the OOM of) one point; the point is recorded either way."""
        s = self.settings
        point = {"mode": mode, "batch": batch, "seconds": seconds, "units": batch * samples(self.cfg, seconds)}
        try:
            self._predict(point["units"], mode)
            work = make_workload(self.model, self.cfg, batch, seconds, s.device, s.dtype)
            run = work.train if mode == "train" else work.infer
            run()  # warm-up; creates the optimizer state, which then counts as resident
            point |= {"status": "ok", "peak_bytes": peak_bytes(run, work.resident(), s.device),
                      "fixed_bytes": work.fixed_bytes()}
        except MemoryExceededError as err:
            point |= {"status": "oom", "reason": str(err)}
        except (RuntimeError, MemoryError) as err:
            if not _is_oom(err):
                raise
            point |= {"status": "oom", "reason": str(err).splitlines()[0][:200]}
        finally:
            work = run = None
            _release(s.device)
        self.points.append(point)
        return point

    def find(self, batch: int, seconds: float, mode: str) -> dict | None:
        return next((p for p in self.points if (p["batch"], p["seconds"], p["mode"]) == (batch, seconds, mode)), None)


def max_batch_predicted(curve: MemoryCurve, seconds: float, budget_bytes: float) -> int | None:
    """Largest training batch under the budget from the measured points at `seconds`.

    Two or more batch sizes: the line through the smallest and largest. One: the line through it and
    its batch-independent part (parameters, gradients, optimizer state), measured exactly.
    """
    ok = sorted((p["batch"], p["peak_bytes"], p["fixed_bytes"]) for p in curve.points
                if p["mode"] == "train" and p["seconds"] == seconds and p["status"] == "ok")
    if not ok:
        return None
    (b1, p1, f1), (b2, p2, _) = ok[0], ok[-1]
    if b2 != b1:
        slope = (p2 - p1) / (b2 - b1)
        fixed = p1 - slope * b1
    else:
        slope, fixed = (p1 - f1) / b1, f1
    return max(int((budget_bytes - fixed) // slope), 0)


def max_batch_cuda(model: nn.Module, cfg: ModelConfig, settings: ProfileSettings, budget_bytes: float) -> int:
    """Largest training batch that runs under the budget on CUDA: doubling, then bisection on real OOMs."""
    device = torch.device(settings.device)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(budget_bytes / total, 1.0), device)

    def fits(batch: int) -> bool:
        try:
            work = make_workload(model, cfg, batch, settings.seconds, settings.device, settings.dtype)
            work.train()
            work.train()
            return True
        except (RuntimeError, MemoryError) as err:
            if not _is_oom(err):
                raise
            return False
        finally:
            work = None
            _release(settings.device)

    try:
        low, high = 0, 1
        while high <= 4096 and fits(high):
            low, high = high, high * 2
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        return low
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def peak_rss_subprocess(cfg: ModelConfig, settings: ProfileSettings, mode: str) -> float:
    """Peak resident set (MiB) of a fresh process that builds the model and runs one step."""
    command = [
        sys.executable, "-m", "bench.rss_probe", "--config", json.dumps(cfg.to_dict()), "--mode", mode,
        "--batch", str(settings.batch), "--seconds", str(settings.seconds), "--dtype", settings.dtype,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["killed"])[-1]
        raise MemoryExceededError(f"RSS probe failed ({proc.returncode}): {last[:200]}")
    return json.loads(proc.stdout)["peak_rss_mib"]


def throughput(model: nn.Module, cfg: ModelConfig, settings: ProfileSettings, mode: str) -> dict[str, float]:
    """Median step time, spread, real-time factor and audio seconds per second of one mode."""
    s = settings
    work = make_workload(model, cfg, s.batch, s.seconds, s.device, s.dtype)
    timing = time_call(work.train if mode == "train" else work.infer, s.repeats, s.warmup, s.device)
    audio = s.batch * s.seconds
    return {
        f"{mode}_step_s": timing["median_s"],
        f"{mode}_step_min_s": timing["min_s"],
        f"{mode}_step_max_s": timing["max_s"],
        f"rtf_{mode}": timing["median_s"] / audio,
        f"{mode}_audio_s_per_s": audio / timing["median_s"],
    }


def measured_model(cfg: ModelConfig, device: str) -> nn.Module:
    """The model every measurement uses: built after seeding 0, on the device."""
    torch.manual_seed(0)
    return build_model(cfg).to(device)


def top_ops_table(model: nn.Module, cfg: ModelConfig, settings: ProfileSettings, mode: str, rows: int = 15) -> str:
    """torch.profiler's table of the ops that took the most self time in one step (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    s = settings
    work = make_workload(model, cfg, s.batch, s.seconds, s.device, s.dtype)
    run = work.train if mode == "train" else work.infer
    run()
    cuda = torch.device(s.device).type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        run()
        if cuda:
            torch.cuda.synchronize(s.device)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=48)


def _train_points(settings: ProfileSettings) -> list[tuple[int, float]]:
    """(batch, seconds) points of the training-memory curve, smallest first."""
    s = settings
    points = {(s.batch, s.seconds)} | {(s.batch, length) for length in s.lengths}
    return sorted(points, key=lambda p: p[0] * p[1])


def profile_variant(name: str, cfg: ModelConfig, settings: ProfileSettings) -> dict:
    """Every figure of one variant under the stated conditions; OOMs recorded, never raised."""
    s = settings
    model = measured_model(cfg, s.device)
    out: dict = {"variant": name, **asdict(s)}
    out["device"] = device_name(s.device)
    out["threads"] = torch.get_num_threads()
    out["params"] = sum(p.numel() for p in model.parameters())
    out["params_m"] = out["params"] / 1e6
    out |= count_macs(model, cfg, s.seconds, s.device)
    curve = MemoryCurve(model, cfg, s)
    for batch, seconds in _train_points(s):
        curve.measure(batch, seconds, "train")
    infer = curve.measure(s.batch, s.seconds, "infer")
    train = curve.find(s.batch, s.seconds, "train")
    out["status"] = "ok" if train["status"] == "ok" else "oom"
    out["reason"] = train.get("reason", "")
    out["peak_mem_train_mib"] = train["peak_bytes"] / MIB if train["status"] == "ok" else None
    out["peak_mem_infer_mib"] = infer["peak_bytes"] / MIB if infer["status"] == "ok" else None
    out["memory_curve"] = [{k: v for k, v in p.items() if k != "units"} for p in curve.points]
    budget = s.budget_gb * 2**30
    if torch.device(s.device).type == "cuda":
        out["max_batch_train"], out["max_batch_method"] = max_batch_cuda(model, cfg, s, budget), "measured"
    else:
        out["max_batch_train"], out["max_batch_method"] = max_batch_predicted(curve, s.seconds, budget), "predicted"
    if torch.device(s.device).type == "cpu" and s.rss:
        for mode, point in (("train", train), ("infer", infer)):
            out[f"peak_rss_{mode}_mib"] = _try_rss(cfg, s, mode) if point["status"] == "ok" else None
    if infer["status"] == "ok":
        out |= throughput(model, cfg, s, "infer")
    if train["status"] == "ok":
        out |= throughput(model, cfg, s, "train")
    return out


def _try_rss(cfg: ModelConfig, settings: ProfileSettings, mode: str) -> float | None:
    try:
        return peak_rss_subprocess(cfg, settings, mode)
    except MemoryExceededError:
        return None


FIGURES = (
    "params", "params_m", "matmul_macs_g_per_s", "scan_macs_g_per_s", "macs_g_per_s", "peak_mem_train_mib",
    "peak_mem_infer_mib", "peak_rss_train_mib", "peak_rss_infer_mib", "max_batch_train", "infer_step_s",
    "infer_step_min_s", "infer_step_max_s", "rtf_infer", "infer_audio_s_per_s", "train_step_s", "train_step_min_s",
    "train_step_max_s", "rtf_train", "train_audio_s_per_s",
)
CONDITIONS = ("device", "batch", "seconds", "dtype", "budget_gb", "repeats", "warmup", "threads", "max_batch_method")


def record_profile(result: dict, cfg: ModelConfig, uri: str, table_text: str = "") -> str:
    """Log one profile to MLflow (experiment 'mbsbench-profile'); returns the run id."""
    from bench.tracking import provenance_tags, start_run

    tags = provenance_tags(result["device"]) | {"task": "profile", "variant": result["variant"]}
    tags |= {"status": result["status"], "reason": result.get("reason", "")[:500]}
    with start_run(uri, "mbsbench-profile", f"profile {result['variant']}", tags) as run:
        run.log_params(cfg.to_dict() | {f"run_{k}": result[k] for k in CONDITIONS if k in result})
        run.log_metrics({k: result[k] for k in FIGURES if isinstance(result.get(k), int | float)})
        for point in result["memory_curve"]:
            if point["status"] == "ok":
                name = f"peak_mem_{point['mode']}_mib_b{point['batch']}"
                run.log_metrics({name: point["peak_bytes"] / MIB}, step=int(point["seconds"] * 1000))
        run.log_text(json.dumps(result, indent=2, default=str), "profile.json")
        if table_text:
            run.log_text(table_text, "params.txt")
        return run.run_id


COMPARE_VARIANTS = ("original", "optimized", "optimized_a", "bsrnn")


def compare_scans(names: list[str], scans: list[str], chunks: list[int], settings: ProfileSettings,
                  overrides: dict | None = None) -> list[dict]:
    """Inference and training-step time of each variant with each scan (and chunk size).

    Each row runs in a fresh process: what one model leaves in the allocator (a raised mmap
    threshold, a fragmented heap) moved the next model's times by up to 50% in one process.
    """
    from variants.registry import build_config

    jobs = []
    for name in names:
        base = build_config(name, **(overrides or {}))
        combos = [(base.scan, base.chunk_size)] if base.arch != "mbsnet" else \
            [(scan, chunk) for scan in scans for chunk in (chunks if scan != "naive" else [base.chunk_size])]
        jobs += [(name, replace(base, scan=scan, chunk_size=chunk)) for scan, chunk in combos]
    rows = []
    for index, (name, cfg) in enumerate(jobs, 1):
        scan = cfg.scan if cfg.arch == "mbsnet" else "-"
        print(f"[{index}/{len(jobs)}] {name} scan={scan} chunk={cfg.chunk_size} ...", file=sys.stderr, flush=True)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            row = pool.submit(_compare_row, cfg, settings).result()
        rows.append({"variant": name, "scan": scan, "chunk": cfg.chunk_size} | row)
    return rows


def _compare_row(cfg: ModelConfig, settings: ProfileSettings) -> dict[str, float]:
    model = measured_model(cfg, settings.device)
    return throughput(model, cfg, settings, "infer") | throughput(model, cfg, settings, "train")
