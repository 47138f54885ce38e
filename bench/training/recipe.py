"""The reference recipe's math: the loss, the crop sampler, the validation loss (MODELS.md).

Loss 0.5 * L1(complex STFT) + 0.5 * L1(|STFT|^0.3), with the phase term for explicit-phase models.
Batches and crops are a pure function of (seed, epoch, step), so a resumed run replays exactly what
an uninterrupted one would, and a rank of a data-parallel run takes its share of the same batch.
"""

import numpy as np
import torch
from torch import Tensor

from bench.data.datasets import Pair, input_gain, load_pair
from bench.training.request import TrainSettings
from variants.config import ModelConfig
from variants.errors import MbsbenchError
from variants.layers import wrap_phase
from variants.spectral import stft


def se_loss(est: Tensor, clean: Tensor, cfg: ModelConfig, phase_term: bool = False) -> Tensor:
    """0.5 L1(RI) + 0.5 L1(|.|^0.3) on the model's STFT; with phase_term 0.3 RI + 0.3 mag + 0.4 phase."""
    est_spec, clean_spec = stft(est, cfg), stft(clean, cfg)
    ri = (torch.view_as_real(est_spec) - torch.view_as_real(clean_spec)).abs().mean()
    mag = (est_spec.abs().clamp_min(1e-8) ** 0.3 - clean_spec.abs().clamp_min(1e-8) ** 0.3).abs().mean()
    if not phase_term:
        return 0.5 * ri + 0.5 * mag
    phase = wrap_phase(est_spec.angle() - clean_spec.angle()).abs().mean()
    return 0.3 * ri + 0.3 * mag + 0.4 * phase


class CropSampler:
    """Batches of random crops, a pure function of (seed, epoch, index): resumable by construction."""

    def __init__(self, pairs: list[Pair], settings: TrainSettings, cfg: ModelConfig):
        batch = settings.batch
        if not pairs or batch > len(pairs):
            raise MbsbenchError(f"batch {batch}: the training split has {len(pairs)} utterances")
        self.pairs, self.size, self.seed = pairs, batch, settings.seed
        self.crop = round(settings.crop_seconds * cfg.sample_rate)
        self.cfg = cfg
        self.per_epoch = max(1, len(pairs) // batch)
        self.cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _audio(self, pair: Pair) -> tuple[np.ndarray, np.ndarray]:
        if pair.id not in self.cache:
            self.cache[pair.id] = load_pair(pair)
        return self.cache[pair.id]

    def _length(self, pair: Pair) -> int:
        """Samples of a pair (its audio is read once and kept: every rank needs every length)."""
        return len(self._audio(pair)[0])

    def batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[Tensor, Tensor]:
        """(clean, noisy), each (batch / world, crop): rank's share of global step `step`'s batch.

        Both signals are scaled by the noisy crop's gain. Every rank draws every crop start, so a
        share is exactly the rows of the single-process batch.
        """
        epoch, index = divmod(step, self.per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        share = self.size // world
        cleans, noisies = [], []
        for row, k in enumerate(order[index * self.size : (index + 1) * self.size]):
            length = self._length(self.pairs[k])
            start = int(rng.integers(max(length, self.crop) - self.crop + 1))
            if not rank * share <= row < (rank + 1) * share:
                continue
            clean, noisy = self._audio(self.pairs[k])
            if len(clean) < self.crop:  # shorter files are tiled, as the reference does
                clean, noisy = np.resize(clean, self.crop), np.resize(noisy, self.crop)
            clean, noisy = clean[start : start + self.crop], noisy[start : start + self.crop]
            gain = input_gain(noisy, self.cfg)
            cleans.append(clean * gain)
            noisies.append(noisy * gain)
        return torch.from_numpy(np.stack(cleans)).float(), torch.from_numpy(np.stack(noisies)).float()
