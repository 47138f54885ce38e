"""Frame-by-frame inference of a causal MBS-Net: one hop in, what is final out, the state carried.

FrameStep is the model on one frame with its state in and out (what `bench export --onnx` exports);
StreamingEnhancer carries that state and the STFT's input and overlap-add buffers between pushes. The
offline model's centred STFT reflects the signal at both ends; the start is within the first frames' reach,
and `flush` reflects the end once the length is known, so the concatenated output equals the offline
model's on the whole utterance (float32: within 1e-5).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from variants.errors import MbsbenchError
from variants.layers import MambaBlock, MaskDecoder3Tap
from variants.mbsnet import MBSNet


def check_streamable(model: MBSNet) -> None:
    """A model whose every layer reads only the past (and the STFT window), or a one-line error naming why not."""
    cfg = model.cfg
    problems = [
        (cfg.arch != "mbsnet", f"arch={cfg.arch}: the streaming engine steps MBS-Net"),
        (cfg.band_norm != "frame", "band_norm=time normalises over the utterance (add causal_norm)"),
        (cfg.bidirectional_time, "bidirectional_time=True runs a backward scan (add unidirectional)"),
        (cfg.decoder == "mask3tap" and cfg.mask_taps != "past", "mask_taps=centered reads a frame ahead "
                                                                "(add causal_mask)"),
        (cfg.pcs, "pcs=True stretches the whole output"),
        (cfg.scan_clamps != "none" or cfg.skip_d != "learned", "the reference's scan bugs are not stepped"),
    ]
    for bad, why in problems:
        if bad:
            raise MbsbenchError(f"cannot stream this model: {why}")


class FrameStep(nn.Module):
    """The model on one STFT frame, every state passed in and returned: (samples of the frame, *state) ->
    (its windowed synthesis frame, *state). Real arithmetic only (the DFT as two matmuls), so that torch's
    ONNX exporter takes it whole. The state: per Mamba block its conv's last d_conv - 1 inputs (b*K, d,
    d_conv - 1) and scan state (b*K, d, d_state); the two past spectrum frames (b, F, 2, 2) the 3-tap mask
    reads (t-2, t-1; real, imaginary)."""

    def __init__(self, model: MBSNet):
        super().__init__()
        check_streamable(model)
        self.model, self.cfg = model.eval(), model.cfg
        size, dtype = self.cfg.n_fft, next(model.parameters()).dtype
        k = torch.arange(size, dtype=torch.float64)
        f = torch.arange(size // 2 + 1, dtype=torch.float64)
        angle = 2 * math.pi * k[:, None] * f[None] / size  # (n_fft, F)
        window = torch.hann_window(size, dtype=torch.float64)
        weight = torch.full_like(f, 2.0 / size)
        weight[0] = weight[-1] = 1.0 / size  # irfft: DC and Nyquist once, the others twice
        self.register_buffer("analysis", torch.stack([angle.cos(), -angle.sin()]).mul(window[:, None]).to(dtype))
        self.register_buffer("synthesis", torch.stack([angle.T.cos(), -angle.T.sin()]).mul(weight[:, None])
                             .mul(window).to(dtype))  # (2, F, n_fft), the window applied
        self.blocks = [block for encoder in model.encoders for block in encoder.time_blocks]
        self.eval()

    def initial_state(self, batch: int) -> list[Tensor]:
        """Zeros: no input before the first frame (as the offline model's padding)."""
        cfg, dtype = self.cfg, self.analysis.dtype
        rows, bins = batch * len(cfg.band_widths), cfg.n_fft // 2 + 1
        per_block = [torch.zeros(rows, cfg.d_inner, cfg.d_conv - 1, dtype=dtype),
                     torch.zeros(rows, cfg.d_inner, cfg.d_state, dtype=dtype)]
        return [*(t.clone() for _ in self.blocks for t in per_block), torch.zeros(batch, bins, 2, 2, dtype=dtype)]

    def forward(self, samples: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        spec = torch.stack([samples @ self.analysis[0], samples @ self.analysis[1]], dim=-1)  # (b, F, 2)
        state, past = list(state[:-1]), state[-1]
        z = self.model.band_split.from_real(spec[:, :, None])  # (b, 1, K, N): per-frame norm and Linear
        features = []
        for encoder in self.model.encoders:
            x, state = self._encoder(encoder, z, state)
            features.append(x)
        model = self.model
        streams = [features[min(i, len(features) - 1)] for i in range(model.n_streams)]
        if model.heads is not None:
            streams = [head(x) for head, x in zip(model.heads, streams)]
        if model.decoder.paths == 1 and len(streams) == 2:
            streams = [(streams[0] + streams[1]) / 2]
        if isinstance(model.decoder, MaskDecoder3Tap):
            out, past = self._mask3tap(model.decoder, streams[0], spec, past)
        else:
            out = self._mag_phase(model.decoder, streams, spec)
        synthesis = out[..., 0] @ self.synthesis[0] + out[..., 1] @ self.synthesis[1]
        return (synthesis, *state, past)

    def _encoder(self, encoder, x: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        b, _, k, n = x.shape
        seq = x.transpose(1, 2).reshape(b * k, 1, n)
        for block in encoder.time_blocks:
            at = 2 * self.blocks.index(block)
            seq, state[at], state[at + 1] = self._mamba(block, seq, state[at], state[at + 1])
        temporal = seq.reshape(b, k, 1, n).transpose(1, 2)
        across = encoder.band_mixer(temporal.reshape(b, k, n)).reshape(b, 1, k, n)
        return encoder.norm(temporal + across), state

    @staticmethod
    def _mamba(block: MambaBlock, x: Tensor, conv: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step of a Mamba block on (b, 1, N): the conv over its last inputs, the scan's recurrence."""
        ssm = block.ssm
        xs, z = block.in_proj(block.norm(x))[:, 0].chunk(2, dim=-1)  # (b, d) each
        window = torch.cat([conv, xs[..., None]], dim=-1)  # (b, d, d_conv): oldest first, as the padding
        xc = F.silu((window * ssm.conv1d.weight[:, 0]).sum(-1) + ssm.conv1d.bias)
        delta = F.softplus(ssm.dt_proj(ssm.x_proj_dt(xc)))  # (b, d)
        A = -torch.exp(ssm.A_log)  # (d, n)
        h = torch.exp(delta[..., None] * A) * h + (delta * xc)[..., None] * ssm.B_proj(xc)[:, None]
        y = (h * ssm.C_proj(xc)[:, None]).sum(-1) + ssm.D * xc
        return x + block.out_proj(y * F.silu(z))[:, None], window[..., 1:], h

    @staticmethod
    def _mask3tap(decoder: MaskDecoder3Tap, stream: Tensor, spec: Tensor, past: Tensor) -> tuple[Tensor, Tensor]:
        """The past-only 3-tap complex mask on frames t-2, t-1, t, in real and imaginary parts."""
        m = decoder.heads(stream)[:, 0].unflatten(-1, (-1, 3, 2))  # (b, F, 3, 2)
        frames = torch.cat([past, spec[:, :, None]], dim=2)  # (b, F, 3, 2): t-2, t-1, t
        re = m[..., 0] * frames[..., 0] - m[..., 1] * frames[..., 1]
        im = m[..., 0] * frames[..., 1] + m[..., 1] * frames[..., 0]
        return torch.stack([re.sum(-1), im.sum(-1)], dim=-1), frames[:, :, 1:]

    @staticmethod
    def _mag_phase(decoder, streams: list[Tensor], spec: Tensor) -> Tensor:
        """|X| m exp(i (angle X + o)) without the angle: rotate X by o and scale it by m."""
        mask = torch.sigmoid(decoder.mag(streams[0]))[:, 0]  # (b, F)
        offset = torch.tanh(decoder.phase(streams[1]))[:, 0] * math.pi
        cos, sin = torch.cos(offset), torch.sin(offset)
        re, im = spec[..., 0], spec[..., 1]
        return torch.stack([mask * (re * cos - im * sin), mask * (re * sin + im * cos)], dim=-1)


class StreamingEnhancer:
    """push(samples) -> the enhanced samples that are final; flush() -> the rest (same total length)."""

    def __init__(self, model: MBSNet, batch: int = 1, runner=None):
        """`runner` steps frames in place of FrameStep(model) (an exported step), called the same way."""
        step = FrameStep(model)
        self.step, self.cfg = runner or step, model.cfg
        self.dtype = step.analysis.dtype
        self.state = step.initial_state(batch)
        self.window = torch.hann_window(self.cfg.n_fft, dtype=self.dtype)
        self.pad = self.cfg.n_fft // 2
        self.batch = batch
        self.samples = self._zeros(batch, 0)  # input from sample `first` on
        self.first = self.received = self.frames = self.emitted = 0
        self.ola = self._zeros(batch, 0)  # overlap-add, padded index from `ola_first` on
        self.ola_first = 0

    def state_bytes(self) -> int:
        """Bytes carried between pushes: the step's state and the input and overlap-add buffers."""
        return sum(t.numel() * t.element_size() for t in [self.samples, self.ola, *self.state])

    def _zeros(self, *shape: int) -> Tensor:
        return torch.zeros(*shape, dtype=self.dtype)

    @torch.no_grad()
    def push(self, chunk: Tensor) -> Tensor:
        """Take (batch, m) more input samples; return the output samples that no coming frame changes."""
        self.samples = torch.cat([self.samples, chunk.to(self.dtype)], dim=1)
        self.received += chunk.shape[1]
        # frame t reads input t*hop - pad .. t*hop + pad - 1, and the reflected start reads sample pad
        while max(self.frames * self.cfg.hop + self.pad, self.pad + 1) <= self.received:
            self._frame(self._input_frame(self.frames, None))
        return self._emit(self.frames * self.cfg.hop - self.pad, None)

    @torch.no_grad()
    def flush(self) -> Tensor:
        """The end of the utterance: its last frames (the end reflected, as the offline STFT does) and the rest."""
        total = self.received
        if total <= self.pad:
            raise MbsbenchError(f"an utterance of {total} samples: the STFT's reflect padding needs more than "
                                f"{self.pad}")
        while self.frames < 1 + total // self.cfg.hop:
            self._frame(self._input_frame(self.frames, total))
        return self._emit(total, total)

    def _input_frame(self, t: int, total: int | None) -> Tensor:
        """Samples t*hop - pad .. t*hop + pad - 1 of the input, reflected at the start (and the end, once known)."""
        index = torch.arange(t * self.cfg.hop - self.pad, t * self.cfg.hop + self.pad).abs()  # x[-k] = x[k]
        if total is not None:
            index = torch.where(index >= total, 2 * (total - 1) - index, index)  # x[total - 1 + k] = x[total - 1 - k]
        return self.samples[:, index - self.first]

    def _frame(self, samples: Tensor) -> None:
        synthesis, *self.state = self.step(samples, *self.state)
        start = self.frames * self.cfg.hop - self.ola_first
        grow = start + self.cfg.n_fft - self.ola.shape[1]
        if grow > 0:
            self.ola = F.pad(self.ola, (0, grow))
        self.ola[:, start:start + self.cfg.n_fft] += synthesis
        self.frames += 1
        keep_from = max(0, self.frames * self.cfg.hop - self.cfg.n_fft)  # what coming frames and the end read
        if keep_from > self.first:
            self.samples, self.first = self.samples[:, keep_from - self.first:], keep_from

    def _emit(self, upto: int, total: int | None) -> Tensor:
        """Output samples emitted .. upto - 1 (original indices), divided by the window envelope."""
        if upto <= self.emitted:
            return self._zeros(self.batch, 0)
        padded = torch.arange(self.emitted + self.pad, upto + self.pad)
        out = self.ola[:, padded - self.ola_first] / self._envelope(padded, total)
        self.emitted = upto
        drop = self.emitted + self.pad - self.ola_first
        self.ola, self.ola_first = self.ola[:, drop:], self.ola_first + drop
        return out

    def _envelope(self, padded: Tensor, total: int | None) -> Tensor:
        """Sum of the squared window over the frames that cover each padded index (fewer at the two ends)."""
        hop, size = self.cfg.hop, self.cfg.n_fft
        last = (1 + total // hop if total is not None else self.frames) - 1
        envelope = torch.zeros(padded.shape, dtype=self.dtype)
        for back in range(math.ceil(size / hop)):
            t = padded // hop - back
            inside = (t >= 0) & (t <= last) & (padded - t * hop < size)
            envelope += torch.where(inside, self.window[(padded - t * hop).clamp(0, size - 1)] ** 2, 0.0)
        return envelope


def enhance_streaming(model: MBSNet, wav: Tensor, chunks: list[int]) -> Tensor:
    """The whole utterance pushed in chunks of these sizes (the rest in one), then flushed; (b, samples)."""
    engine = StreamingEnhancer(model, wav.shape[0])
    outs, at = [], 0
    for size in [*chunks, wav.shape[1]]:
        if at >= wav.shape[1]:
            break
        outs.append(engine.push(wav[:, at:at + size]))
        at += size
    return torch.cat([*outs, engine.flush()], dim=1)
