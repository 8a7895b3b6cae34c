"""Projection heads: map backbone features to L2-normalised embeddings for contrastive losses.

Wang et al., "Exploring Cross-Image Pixel Contrast for Semantic Segmentation", ICCV 2021,
arXiv:2101.11939: a 1x1 conv - BN - ReLU - 1x1 conv head on the backbone features, whose
output is L2-normalised per pixel. Region contrast and Contextrast use the same head (Contextrast
one per backbone stage). Heads are training-only layers: they live with the losses
(:func:`rca.losses.build_contrast`), never in the segmentation model, so inference costs nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Sequential):
    """1x1 conv (``in_channels`` -> ``in_channels``) - BN - ReLU - 1x1 conv (-> ``dim``), then L2
    normalisation along the channels (Wang et al., ICCV 2021, arXiv:2101.11939).

    Args:
        in_channels: channels of the input features.
        dim: embedding dimension (the papers use 256).

    Forward: ``(B, in_channels, h, w)`` -> ``(B, dim, h, w)`` float, unit L2 norm along dim 1.
    """

    def __init__(self, in_channels: int, dim: int = 256) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, dim, 1),
        )
        self.in_channels, self.dim = in_channels, dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(super().forward(features), dim=1)
