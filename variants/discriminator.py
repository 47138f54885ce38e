"""The optional MetricGAN discriminator of the reference (CMGAN's): predicts a normalised PESQ.

181,650 parameters (MODELS.md). `bench run --metricgan` (on under `--recipe reference`) trains it
against each batch's PESQ; bench/training/metricgan.py holds that recipe.
"""

import itertools

import torch
from torch import Tensor, nn
from torch.nn.utils import spectral_norm


class LearnableSigmoid(nn.Module):
    """beta * sigmoid(slope * x) with a learnable slope per feature."""

    def __init__(self, features: int, beta: float = 1.2):
        super().__init__()
        self.beta = beta
        self.slope = nn.Parameter(torch.ones(features))

    def forward(self, x: Tensor) -> Tensor:
        return self.beta * torch.sigmoid(self.slope * x)


STAGES = 4
# each 4x4 stride-2 conv (padding 1) halves the frames (floor); the last stage's input needs two of them
MIN_FRAMES = 2**STAGES


def _conv_stage(cin: int, cout: int) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, (4, 4), (2, 2), (1, 1), bias=False)
    return [spectral_norm(conv), nn.InstanceNorm2d(cout, affine=True), nn.PReLU(cout)]


class Discriminator(nn.Module):
    """Four spectral-norm 4x4 stride-2 convs with instance norm and PReLU, max-pool, two Linears."""

    def __init__(self, ndf: int = 16, in_channels: int = 2, beta: float = 1.2):
        super().__init__()
        widths = [in_channels, ndf, 2 * ndf, 4 * ndf, 8 * ndf]
        stages = [layer for cin, cout in itertools.pairwise(widths[: STAGES + 1]) for layer in _conv_stage(cin, cout)]
        self.layers = nn.Sequential(
            *stages,
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            spectral_norm(nn.Linear(8 * ndf, 4 * ndf)),
            nn.Dropout(0.3),
            nn.PReLU(4 * ndf),
            spectral_norm(nn.Linear(4 * ndf, 1)),
            LearnableSigmoid(1, beta),
        )

    def forward(self, clean_mag: Tensor, enhanced_mag: Tensor) -> Tensor:
        """Score (B, 1) of magnitude spectrograms, each (B, 1, F, T)."""
        return self.layers(torch.cat([clean_mag, enhanced_mag], dim=1))
