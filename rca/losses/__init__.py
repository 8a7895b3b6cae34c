"""Losses, one module each: RCA semantic contrast (classifier stage), and the segmentation stage's
pixel contrast, region contrast and Contextrast (combined from the config by :func:`build_contrast`);
:mod:`~rca.losses.info_nce` holds the InfoNCE core they share."""

from rca.losses.contextrast import (Contextrast, bane_sampling, boundary_negatives, class_anchors,
                                    pixel_anchor_loss, update_anchors)
from rca.losses.info_nce import info_nce, resize_labels
from rca.losses.pixel_contrast import (PixelContrast, hard_anchor_sampling, memory_contrast_loss,
                                       pixel_contrast_loss)
from rca.losses.region_contrast import RegionContrast, region_centres, region_contrast_loss
from rca.losses.seg_contrast import CONTRAST_LOSSES, ContrastLoss, build_contrast
from rca.losses.semantic_contrast import (mix_regions, mixed_semantic_contrast_loss,
                                          semantic_contrast_loss)

__all__ = [
    "CONTRAST_LOSSES",
    "ContrastLoss",
    "Contextrast",
    "PixelContrast",
    "RegionContrast",
    "bane_sampling",
    "boundary_negatives",
    "build_contrast",
    "class_anchors",
    "hard_anchor_sampling",
    "info_nce",
    "memory_contrast_loss",
    "mix_regions",
    "mixed_semantic_contrast_loss",
    "pixel_anchor_loss",
    "pixel_contrast_loss",
    "region_centres",
    "region_contrast_loss",
    "resize_labels",
    "semantic_contrast_loss",
]
