"""The reference recipe's MetricGAN term (CMGAN's): a discriminator learns the normalised PESQ of an
enhanced magnitude against the clean one, and the generator is pushed toward the best score.

- Discriminator (variants/discriminator.py) on compressed magnitudes |STFT|^0.3, (B, 2, F, T).
- Its targets: (PESQ + 0.5) / 5 of each enhanced crop, clipped to [0, 1] (wideband MOS-LQO 1.04..4.64
  gives 0.31..1), computed in the metric process pool, never one by one in the training thread; an
  unscorable output gets PESQ's worst value, a silent reference is left out of the loss.
- Discriminator loss MSE(D(clean, clean), 1) + MSE(D(clean, enhanced), target), every step, AdamW at
  twice the generator's learning rate (as CMGAN); the generator gains weight * MSE(D(clean, enhanced), 1)
  from half-way through the budget.
- Its dropout draws from a generator seeded by (seed, step), so that a resumed run is exact.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.quality.metrics import PesqPool
from bench.training.distributed import data_parallel
from bench.training.request import RunContext, TrainSettings
from variants.config import ModelConfig
from variants.discriminator import Discriminator
from variants.spectral import stft


def compressed_magnitude(wav: Tensor, cfg: ModelConfig) -> Tensor:
    """|STFT|^0.3 of a waveform batch, (B, 1, F, T)."""
    return stft(wav.float(), cfg).abs().clamp_min(1e-8).pow(0.3).unsqueeze(1)


def pesq_targets(scores: list[float]) -> np.ndarray:
    """(PESQ + 0.5) / 5 clipped to [0, 1]; NaN (a silent reference) stays NaN."""
    return np.clip((np.asarray(scores, dtype=np.float64) + 0.5) / 5, 0.0, 1.0)


class MetricGAN:
    """The discriminator, its optimizer and the PESQ pool of one training run (one per rank)."""

    def __init__(self, cfg: ModelConfig, settings: TrainSettings, context: RunContext):
        lr, seed, device, ranks = settings.lr, settings.seed, context.device, context.ranks
        generator = torch.Generator().manual_seed(seed + 7919)  # its own init stream: the model's stays the same
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            self.module = Discriminator().to(device)
        self.net = data_parallel(self.module, ranks, device)  # several ranks: its gradients are averaged too
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=2 * lr, foreach=True)
        self.cfg, self.seed, self.device = cfg, seed, device
        self.pool = PesqPool(context.workers)
        self.last: dict[str, float] = {}

    def _score(self, clean: Tensor, enhanced: Tensor, step: int, stream: int) -> Tensor:
        """D(clean, enhanced), its dropout seeded by (seed, step, stream)."""
        devices = [torch.device(self.device)] if torch.device(self.device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed * 1_000_003 + step * 4 + stream)
            return self.net(compressed_magnitude(clean, self.cfg), compressed_magnitude(enhanced, self.cfg))

    def generator_term(self, clean: Tensor, enhanced: Tensor, step: int) -> Tensor:
        """MSE(D(clean, enhanced), 1): the generator's adversarial loss."""
        score = self._score(clean, enhanced, step, 0).flatten()
        return F.mse_loss(score, torch.ones_like(score))

    def discriminator_step(self, clean: Tensor, enhanced: Tensor, step: int) -> None:
        """One update of the discriminator on this batch (enhanced detached), its targets from the pool."""
        enhanced = enhanced.detach().float()
        pairs = list(zip(clean.detach().float().cpu().numpy(), enhanced.cpu().numpy()))
        targets = torch.tensor(pesq_targets(self.pool.scores(pairs)), dtype=torch.float32, device=self.device)
        keep = torch.isfinite(targets)
        # one forward of (clean, clean) and (clean, enhanced) together: a DDP module takes one forward per backward
        scores = self._score(torch.cat([clean, clean]), torch.cat([clean, enhanced]), step, 1).flatten()
        real, fake = scores.split(len(clean))
        loss = F.mse_loss(real, torch.ones_like(real))
        if keep.any():
            loss = loss + F.mse_loss(fake[keep], targets[keep])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        kept = targets[keep].tolist()
        self.last = {"gan_d_loss": float(loss.detach()), "gan_target_min": min(kept, default=float("nan")),
                     "gan_target_max": max(kept, default=float("nan"))}

    def state(self) -> dict:
        return {"discriminator": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load(self, state: dict) -> None:
        self.module.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])

    def close(self) -> None:
        self.pool.close()
