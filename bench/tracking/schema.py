"""The names MLflow holds, defined once: experiments, figures, metrics and their labels.

`reports` reads runs by these names, so a name changed here changes everywhere at once.
Pure constants: importing this module imports nothing else.
"""

# task -> MLflow experiment; the only place these literals appear
EXPERIMENT_PREFIX = "mbsbench-"
EXPERIMENTS: dict[str, str] = {
    "profile": "mbsbench-profile",
    "run": "mbsbench-run",
    "evaluate": "mbsbench-evaluate",
    "scan": "mbsbench-scan",
    "study": "mbsbench-study",
    "stream": "mbsbench-stream",
}

# per-utterance quality metrics, in the order every table shows them
METRICS: tuple[str, ...] = ("pesq_wb", "stoi", "estoi", "csig", "cbak", "covl", "ssnr", "si_sdr")
# the six that SE papers report on VoiceBank+DEMAND, in the papers' column order
PAPER_METRICS: tuple[str, ...] = ("pesq_wb", "csig", "cbak", "covl", "ssnr", "stoi")
METRIC_LABELS: dict[str, str] = {
    "pesq_wb": "PESQ", "stoi": "STOI", "estoi": "ESTOI", "csig": "CSIG", "cbak": "CBAK", "covl": "COVL",
    "ssnr": "SSNR", "si_sdr": "SI-SDR",
}
# the score an enhanced output that cannot be scored (digital silence, NaN) gets: the metric's worst value
WORST: dict[str, float] = {
    "pesq_wb": 1.04,  # lowest MOS-LQO of the P.862.2 mapping (raw PESQ -0.5)
    "stoi": 0.0, "estoi": 0.0,
    "csig": 1.0, "cbak": 1.0, "covl": 1.0,  # the [1, 5] clamp of the composite measures
    "ssnr": -10.0,  # the per-frame clamp of segmental SNR
    "si_sdr": -50.0,  # no natural bound: a floor far below any real output
}
# non-intrusive metrics (no clean reference): DNSMOS P.835 and P.808 MOS, on request or where installed
DNSMOS_METRICS: tuple[str, ...] = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")
METRIC_LABELS |= {"dnsmos_sig": "DNSMOS SIG", "dnsmos_bak": "DNSMOS BAK", "dnsmos_ovrl": "DNSMOS OVRL",
                  "dnsmos_p808": "P.808 MOS"}
WORST |= dict.fromkeys(DNSMOS_METRICS, 1.0)  # the bottom of the MOS scale
PCS_SUFFIX = "_pcs"

# `bench profile` figures (units in the names) and the conditions they were measured under
PROFILE_FIGURES: tuple[str, ...] = (
    "params", "params_m", "matmul_macs_g_per_s", "scan_macs_g_per_s", "macs_g_per_s", "peak_mem_train_mib",
    "peak_mem_infer_mib", "peak_rss_train_mib", "peak_rss_infer_mib", "max_batch_train", "infer_step_s",
    "infer_step_min_s", "infer_step_max_s", "rtf_infer", "infer_audio_s_per_s", "train_step_s", "train_step_min_s",
    "train_step_max_s", "rtf_train", "train_audio_s_per_s", "ops_train_step", "ops_infer_step",
    "triton_launches_train_step", "triton_launches_infer_step", "timing_other_cores",
    "pred_cuda_peak_alloc_mib", "pred_cuda_peak_reserved_mib", "pred_max_batch_cuda",
    "compile_s_infer", "compile_s_train", "compiled_infer_step_s", "compiled_train_step_s", "recompiles",
    "compiled_graphs",
)
PROFILE_CONDITIONS: tuple[str, ...] = (
    "device", "batch", "seconds", "dtype", "budget_gb", "repeats", "warmup", "threads", "max_batch_method", "ops_only",
    "compiled",
)
# `bench profile --compile`: the compiled steps beside the eager ones, compile time apart
COMPILED_COLUMNS: tuple[str, ...] = (
    "variant", "compiled", "infer_step_s", "compiled_infer_step_s", "train_step_s", "compiled_train_step_s",
    "compile_s_infer", "compile_s_train", "recompiles",
)
# the columns of the profile table printed by `bench profile` and `bench ablate --profile-only`
PROFILE_COLUMNS: tuple[str, ...] = (
    "variant", "params", "macs_g_per_s", "scan_macs_g_per_s", "peak_mem_train_mib", "peak_mem_infer_mib",
    "peak_rss_train_mib", "max_batch_train", "infer_step_s", "train_step_s", "rtf_infer", "ops_train_step",
    "ops_infer_step", "triton_launches_train_step", "timing", "status",
)
# the columns of the `bench run` / `bench ablate` summary
RUN_COLUMNS: tuple[str, ...] = (
    "variant", "seed", "status", "train_steps", "train_minutes", "pesq_wb", "stoi", "csig", "cbak", "covl", "ssnr",
    "si_sdr", "pesq_wb_pcs",
)
