"""Frame-by-frame inference of a causal MBS-Net: one hop in, what is final out, the state carried.

The state: the input samples a coming frame still needs, the depthwise conv's last inputs and the selective
scan's hidden state of every Mamba block, the two spectrum frames the past-only 3-tap mask reads, and the
overlap-add buffer of the inverse STFT. The offline model's centred STFT reflects the signal at both ends;
the start is within the first frames' reach, and `flush` reflects the end once the length is known, so the
concatenated output equals the offline model's on the whole utterance (float32: within 1e-5).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

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


@dataclass
class BlockState:
    """A Mamba block between frames: its conv's last d_conv - 1 inputs and the scan's hidden state."""

    conv: Tensor  # (b, d_inner, d_conv - 1)
    h: Tensor  # (b, d_inner, d_state)


class StreamingEnhancer:
    """push(samples) -> the enhanced samples that are final; flush() -> the rest (same total length)."""

    def __init__(self, model: MBSNet, batch: int = 1):
        check_streamable(model)
        self.model, self.cfg = model.eval(), model.cfg
        param = next(model.parameters())
        self.dtype, self.device = param.dtype, param.device
        self.window = torch.hann_window(self.cfg.n_fft, dtype=self.dtype, device=self.device)
        self.pad = self.cfg.n_fft // 2
        self.batch = batch
        self.blocks = [block for encoder in model.encoders for block in encoder.time_blocks]
        d, n, k = self.cfg.d_inner, self.cfg.d_state, len(self.cfg.band_widths)
        self.states = {id(b): BlockState(self._zeros(batch * k, d, self.cfg.d_conv - 1),
                                         self._zeros(batch * k, d, n)) for b in self.blocks}
        bins = self.cfg.n_fft // 2 + 1
        self.past_spec = torch.zeros(batch, bins, 2, dtype=torch.complex64 if self.dtype != torch.float64
                                     else torch.complex128, device=self.device)  # spectra t-2, t-1
        self.samples = self._zeros(batch, 0)  # input from sample `first` on
        self.first = self.received = self.frames = self.emitted = 0
        self.ola = self._zeros(batch, 0)  # overlap-add, padded index from `ola_first` on
        self.ola_first = 0

    def state_bytes(self) -> int:
        """Bytes carried between pushes: input and overlap-add buffers, conv inputs, scan states, past frames."""
        tensors = [self.samples, self.ola, self.past_spec] + [t for st in self.states.values() for t in (st.conv, st.h)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _zeros(self, *shape: int) -> Tensor:
        return torch.zeros(*shape, dtype=self.dtype, device=self.device)

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
        index = torch.arange(t * self.cfg.hop - self.pad, t * self.cfg.hop + self.pad, device=self.device)
        index = index.abs()  # x[-k] = x[k]
        if total is not None:
            index = torch.where(index >= total, 2 * (total - 1) - index, index)  # x[total - 1 + k] = x[total - 1 - k]
        return self.samples[:, index - self.first]

    def _frame(self, samples: Tensor) -> None:
        spec = torch.fft.rfft(samples * self.window, dim=-1)  # (b, F): this frame of the offline STFT
        enhanced = self._enhance(spec)
        t, hop = self.frames, self.cfg.hop
        start = t * hop - self.ola_first
        grow = start + self.cfg.n_fft - self.ola.shape[1]
        if grow > 0:
            self.ola = F.pad(self.ola, (0, grow))
        self.ola[:, start:start + self.cfg.n_fft] += torch.fft.irfft(enhanced, n=self.cfg.n_fft, dim=-1) * self.window
        self.frames += 1
        keep_from = max(0, self.frames * hop - self.cfg.n_fft)  # what coming frames (and the reflected end) read
        if keep_from > self.first:
            self.samples, self.first = self.samples[:, keep_from - self.first:], keep_from

    def _emit(self, upto: int, total: int | None) -> Tensor:
        """Output samples emitted .. upto - 1 (original indices), divided by the window envelope."""
        if upto <= self.emitted:
            return self._zeros(self.batch, 0)
        padded = torch.arange(self.emitted + self.pad, upto + self.pad, device=self.device)
        out = self.ola[:, padded - self.ola_first] / self._envelope(padded, total)
        self.emitted = upto
        drop = self.emitted + self.pad - self.ola_first
        self.ola, self.ola_first = self.ola[:, drop:], self.ola_first + drop
        return out

    def _envelope(self, padded: Tensor, total: int | None) -> Tensor:
        """Sum of the squared window over the frames that cover each padded index (fewer at the two ends)."""
        hop, size = self.cfg.hop, self.cfg.n_fft
        last = (1 + total // hop if total is not None else self.frames) - 1
        envelope = torch.zeros(padded.shape, dtype=self.dtype, device=self.device)
        for back in range(math.ceil(size / hop)):
            t = padded // hop - back
            inside = (t >= 0) & (t <= last) & (padded - t * hop < size)
            envelope += torch.where(inside, self.window[(padded - t * hop).clamp(0, size - 1)] ** 2, 0.0)
        return envelope

    def _enhance(self, spec: Tensor) -> Tensor:
        """One spectrum frame (b, F) through the model, every layer stepped."""
        model = self.model
        z = model.band_split(spec[..., None])  # (b, 1, K, N): per-frame norm, per-frame Linear
        features = [self._encoder(encoder, z) for encoder in model.encoders]
        streams = [features[min(i, len(features) - 1)] for i in range(model.n_streams)]
        if model.heads is not None:
            streams = [head(x) for head, x in zip(model.heads, streams)]
        if model.decoder.paths == 1 and len(streams) == 2:
            streams = [(streams[0] + streams[1]) / 2]
        if isinstance(model.decoder, MaskDecoder3Tap):
            return self._mask3tap(model.decoder, streams[0], spec)
        return model.decoder(streams, spec[..., None])[..., 0]  # mag/phase: frame by frame

    def _encoder(self, encoder, x: Tensor) -> Tensor:
        b, _, k, n = x.shape
        seq = x.transpose(1, 2).reshape(b * k, 1, n)
        for block in encoder.time_blocks:
            seq = self._mamba(block, seq)
        temporal = seq.reshape(b, k, 1, n).transpose(1, 2)
        across = encoder.band_mixer(temporal.reshape(b, k, n)).reshape(b, 1, k, n)
        return encoder.norm(temporal + across)

    def _mamba(self, block: MambaBlock, x: Tensor) -> Tensor:
        """One step of a Mamba block on (b, 1, N), its conv inputs and scan state carried."""
        state, ssm = self.states[id(block)], block.ssm
        xs, z = block.in_proj(block.norm(x))[:, 0].chunk(2, dim=-1)  # (b, d) each
        window = torch.cat([state.conv, xs[..., None]], dim=-1)  # (b, d, d_conv): oldest first, as the padding
        state.conv = window[..., 1:]
        xc = F.silu((window * ssm.conv1d.weight[:, 0]).sum(-1) + ssm.conv1d.bias)
        delta = F.softplus(ssm.dt_proj(ssm.x_proj_dt(xc)))  # (b, d)
        A = -torch.exp(ssm.A_log)  # (d, n)
        state.h = torch.exp(delta[..., None] * A) * state.h + (delta * xc)[..., None] * ssm.B_proj(xc)[:, None]
        y = (state.h * ssm.C_proj(xc)[:, None]).sum(-1) + ssm.D * xc
        return x + block.out_proj(y * F.silu(z))[:, None]

    def _mask3tap(self, decoder: MaskDecoder3Tap, stream: Tensor, spec: Tensor) -> Tensor:
        """The past-only 3-tap mask on frames t-2, t-1, t (zeros before the first, as the offline padding)."""
        m = decoder.heads(stream)[:, 0].unflatten(-1, (-1, 3, 2))  # (b, F, 3, 2)
        m = torch.view_as_complex(m.to(spec.real.dtype).contiguous())  # (b, F, 3)
        frames = torch.cat([self.past_spec, spec[..., None]], dim=-1)  # (b, F, 3): t-2, t-1, t
        self.past_spec = frames[..., 1:]
        return (m * frames).sum(-1)


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
