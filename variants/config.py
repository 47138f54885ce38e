"""ModelConfig: one frozen dataclass holding every knob of every variant."""

from dataclasses import dataclass, fields

from variants.errors import MbsbenchError, did_you_mean

# 31 bands over 257 bins: 2, 3 x10, 8 x12, 16 x7, 17 (MODELS.md, "Common front end")
BAND_WIDTHS: tuple[int, ...] = (2,) + (3,) * 10 + (8,) * 12 + (16,) * 7 + (17,)

CHOICES: dict[str, tuple] = {
    "arch": ("mbsnet", "bsrnn"),
    "encoder": ("two_branch", "shared"),
    "band_mixer": ("bimamba", "mlp"),
    "output_net": ("mlp2", "linear", "none"),
    "decoder": ("dual_magphase", "mask3tap"),
    "scan": ("naive", "chunked", "chunked_ckpt", "cuda", "triton", "cpu_fused", "auto"),
    "skip_d": ("learned", "const_d_inner"),
    "dt_bias_init": ("log_uniform", "zeroed"),
    "scan_clamps": ("none", "seed"),
    "band_norm": ("time", "frame"),
    "mask_taps": ("centered", "past"),
    "input_scaling": ("utterance", "none"),
}
# fields added after runs and checkpoints were recorded: while at their default they stay out of to_dict, so the
# run keys and checkpoints of earlier runs still match (a saved config without them means the default)
ADDED_FIELDS: dict[str, object] = {"band_norm": "time", "mask_taps": "centered", "input_scaling": "utterance"}
# fields that change how the same function is computed, not what it is: a checkpoint loads whatever they say
EXECUTION_FIELDS: tuple[str, ...] = ("scan", "chunk_size", "checkpoint_blocks", "pcs")
POSITIVE: tuple[str, ...] = (
    "n_fft", "hop", "feature_dim", "temporal_layers", "d_state", "d_conv", "expand",
    "decoder_hidden", "chunk_size", "band_layers",
)
# far above any model of the study (the original: feature_dim 128, d_state 16): a value past one is a typo, and
# it would otherwise end in an allocator's traceback or a machine out of memory
MAXIMUM: dict[str, int] = {
    "n_fft": 16384, "hop": 16384, "feature_dim": 4096, "temporal_layers": 128, "d_state": 1024, "d_conv": 64,
    "expand": 32, "decoder_hidden": 64, "chunk_size": 1 << 20, "band_layers": 128, "dt_rank": 4096,
}


@dataclass(frozen=True)
class ModelConfig:
    """Every knob of MBS-Net and the BSRNN baseline; the defaults are MBS-Net original."""

    arch: str = "mbsnet"  # "mbsnet" (all MBS-Net variants) or "bsrnn" (the baseline)
    sample_rate: int = 16000  # Hz; the models expect 16 kHz input
    n_fft: int = 512  # STFT size (Hann window of the same length), 257 bins
    hop: int = 128  # STFT hop in samples (8 ms)
    band_widths: tuple[int, ...] = BAND_WIDTHS  # bins per band, summing to n_fft // 2 + 1
    feature_dim: int = 128  # N, channels per band after the band split
    temporal_layers: int = 4  # Mamba blocks over time per encoder (BSRNN: LSTM layers)
    band_layers: int = 5  # BSRNN only: BiLSTM layers over bands
    d_state: int = 16  # N of the SSM (state size per channel)
    d_conv: int = 4  # kernel of the causal depthwise conv in a Mamba block
    expand: int = 2  # d_inner = expand * feature_dim
    dt_rank: int = 0  # rank of the delta projection; 0 means ceil(d_inner / 16)
    bidirectional_time: bool = True  # forward + time-flipped block with a combine layer
    encoder: str = "two_branch"  # "two_branch" (magnitude, phase) or one "shared" encoder
    band_mixer: str = "bimamba"  # across bands: bidirectional Mamba, or a pointwise "mlp"
    output_net: str = "mlp2"  # head per stream: Linear-Tanh-Linear, one "linear", or "none"
    decoder: str = "dual_magphase"  # magnitude mask + phase offset, or the 3-tap complex mask
    decoder_hidden: int = 4  # decoder hidden width as a multiple of feature_dim
    scan: str = "naive"  # selective-scan implementation (variants/scan.py SCANS)
    chunk_size: int = 32  # time steps per chunk of the chunked scans
    checkpoint_blocks: bool = False  # recompute each Mamba block in backward (training)
    skip_d: str = "learned"  # seed bug "const_d_inner": skip term d_inner * x, D unused
    dt_bias_init: str = "log_uniform"  # seed bug "zeroed": dt_proj bias re-initialised to 0
    scan_clamps: str = "none"  # seed bug "seed": the reference scan's six clamps
    pcs: bool = False  # apply perceptual contrast stretching at inference (variants/pcs.py)
    # the band split's and band heads' GroupNorm(1, C): statistics over the whole utterance ("time", as the
    # reference: not causal) or over each frame's features alone ("frame": causal, and nothing to carry when
    # streaming, where a running mean over time would be state and a warm-up)
    band_norm: str = "time"
    mask_taps: str = "centered"  # the 3-tap mask's frames: t-1, t, t+1 (reads one frame ahead) or "past": t-2..t
    # the reference scales each input by c = sqrt(len / sum(noisy^2)) (and the output back), which reads the whole
    # utterance; "none": the model trains and runs on the signal as recorded, as a stream must
    input_scaling: str = "utterance"

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise MbsbenchError(
                    f"{name}={value!r} is not one of {', '.join(allowed)}{did_you_mean(str(value), allowed)}"
                )
        for name in POSITIVE:
            if getattr(self, name) < 1:
                raise MbsbenchError(f"{name}={getattr(self, name)} must be a positive integer")
        for name, most in MAXIMUM.items():
            if getattr(self, name) > most:
                raise MbsbenchError(f"{name}={getattr(self, name)}: expected at most {most}")
        if self.sample_rate != 16000:  # the data, the STFT sizes and wide-band PESQ are all 16 kHz
            raise MbsbenchError(f"sample_rate={self.sample_rate}: expected 16000 (the models, data and metrics are "
                                "16 kHz)")
        if self.dt_rank < 0:
            raise MbsbenchError(f"dt_rank={self.dt_rank} must be >= 0 (0 means ceil(d_inner / 16))")
        if sum(self.band_widths) != self.n_bins or min(self.band_widths) < 1:
            raise MbsbenchError(
                f"band_widths sum to {sum(self.band_widths)}; expected positive widths summing to "
                f"n_fft // 2 + 1 = {self.n_bins}"
            )
        if self.hop >= self.n_fft:  # the periodic Hann window is 0 at its first sample: frames must overlap
            raise MbsbenchError(f"hop={self.hop} must be smaller than n_fft={self.n_fft} (the inverse STFT "
                                "divides by the overlap-added window)")

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def d_inner(self) -> int:
        return self.expand * self.feature_dim

    @property
    def dt_rank_resolved(self) -> int:
        # the reference uses ceil(d_inner / 16), not d_model / 16 as the Mamba paper does
        return self.dt_rank or -(-self.d_inner // 16)

    def to_dict(self) -> dict:
        """Flat dict of every field (band_widths a list; ADDED_FIELDS only off their default), for logging and JSON."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ADDED_FIELDS or getattr(self, f.name) != ADDED_FIELDS[f.name]}
        out["band_widths"] = list(self.band_widths)
        return out

    @classmethod
    def from_dict(cls, fields_: dict) -> "ModelConfig":
        """The config of a to_dict() (band_widths back to a tuple); unknown fields are an error."""
        known = field_types()
        for name in fields_:
            if name not in known:
                raise MbsbenchError(f"unknown field {name!r} in a saved config{did_you_mean(name, known)}")
        return cls(**(fields_ | {"band_widths": tuple(fields_.get("band_widths", BAND_WIDTHS))}))


def field_types() -> dict[str, type]:
    """Map each ModelConfig field to the Python type its values take (tuple for band_widths)."""
    return {f.name: getattr(f.type, "__origin__", f.type) for f in fields(ModelConfig)}
