"""The segmentation stage's contrastive terms, chosen by ``seg.contrast`` (:class:`rca.config.ContrastConfig`).

``seg.contrast.losses`` lists any of

* ``pixel``: pixel contrast in the batch (Wang et al., ICCV 2021, :mod:`rca.losses.pixel_contrast`);
* ``pixel_memory``: pixel contrast against the pixel + segment memory (same paper);
* ``region``: region contrast against a memory of region centres (Hu et al., ICCV 2021,
  :mod:`rca.losses.region_contrast`);
* ``contextrast``: Contextrast over the 4 backbone stages (Sung et al., CVPR 2024,
  :mod:`rca.losses.contextrast`);

an empty list is cross-entropy alone. Each loss owns its projection head(s) and memory, so the
segmentation model (and its checkpoints, and inference) never holds them. The terms count from
``seg.contrast.warmup_iters`` on; before, they are still computed with weight 0 (the memories fill,
and under DDP every head parameter receives a gradient in every iteration).
"""

from __future__ import annotations

import torch
from torch import nn

from rca.losses.contextrast import Contextrast
from rca.losses.pixel_contrast import PixelContrast
from rca.losses.region_contrast import RegionContrast
from rca.segment import upsample_logits

CONTRAST_LOSSES = ("pixel", "pixel_memory", "region", "contextrast")


class ContrastLoss(nn.Module):
    """The selected contrastive losses with their weights and warm-up (see the module docstring).

    Args:
        losses: ``{name: module}`` with names from :data:`CONTRAST_LOSSES`.
        weights: ``{name: weight}``.
        warmup_iters: first iteration at which the weights apply (0 before).

    Forward: ``outputs`` (the segmentation model's dict: ``"logits"`` ``(B, C, h, w)``,
    ``"features"`` ``(B, C_f, h, w)`` and, for Contextrast, ``"stages"``), ``labels`` ``(B, H, W)``
    int64 (255 = ignore) and ``iteration`` (0-based) -> ``{name: weighted scalar loss}``; sum the
    values into the total loss. The predictions for hard anchors and BANE are the argmax of the
    logits upsampled to the label size (no gradient).
    """

    def __init__(self, losses: dict[str, nn.Module], weights: dict[str, float], warmup_iters: int = 0) -> None:
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.weights, self.warmup_iters = dict(weights), warmup_iters

    @property
    def needs_stages(self) -> bool:
        """True when a loss reads the backbone's stages: call the model with ``return_stages=True``."""
        return "contextrast" in self.losses

    def forward(self, outputs: dict, labels: torch.Tensor, iteration: int) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            predictions = upsample_logits(outputs["logits"].detach().float(), labels.shape[-2:]).argmax(1)
        scale = 1.0 if iteration >= self.warmup_iters else 0.0
        terms = {}
        for name, loss in self.losses.items():
            if name == "contextrast":
                value = loss(outputs["stages"], labels, predictions)
            elif name == "region":
                value = loss(outputs["features"], labels)
            else:
                value = loss(outputs["features"], labels, predictions)
            terms[name] = scale * self.weights[name] * value
        return terms


def build_contrast(cfg, num_classes: int, backbone: nn.Module, num_train_images: int) -> ContrastLoss:
    """Build the contrastive losses of a ``seg.contrast`` config section.

    Args:
        cfg: :class:`rca.config.ContrastConfig`.
        num_classes: classes of the segmentation labels.
        backbone: the segmentation model's backbone (``out_channels``; ``stage_channels`` for
            Contextrast).
        num_train_images: size of the training set (default region memory size).

    Returns:
        A :class:`ContrastLoss` (with no losses when ``cfg.losses`` is empty). Its parameters are
        new layers (train them like the ASPP: 10x LR); its state (heads, memories) belongs in the
        training checkpoint for ``--resume``, not in the exported model.

    Raises:
        ValueError: an unknown or repeated loss name.
        NotImplementedError: ``contextrast`` with a backbone that does not expose its stages.
    """
    unknown = [name for name in cfg.losses if name not in CONTRAST_LOSSES]
    if unknown or len(set(cfg.losses)) != len(cfg.losses):
        raise ValueError(f"seg.contrast.losses must list distinct names from {list(CONTRAST_LOSSES)}, "
                         f"got {list(cfg.losses)}")
    px, region, ctx = cfg.pixel, cfg.region, cfg.contextrast
    losses, weights = {}, {}
    for name in cfg.losses:
        if name in ("pixel", "pixel_memory"):
            losses[name] = PixelContrast(
                backbone.out_channels, num_classes, cfg.dim, px.temperature, px.base_temperature, px.max_samples,
                px.max_views, memory_size=px.memory_size if name == "pixel_memory" else 0,
                pixels_per_image=px.pixels_per_image)
            weights[name] = px.weight
        elif name == "region":
            size = region.memory_size or num_train_images
            losses[name] = RegionContrast(backbone.out_channels, num_classes, size, cfg.dim, region.temperature)
            weights[name] = region.weight
        else:
            if not hasattr(backbone, "forward_stages"):
                raise NotImplementedError(
                    f"Contextrast needs a backbone that exposes its stages (resnet18/50/101, "
                    f"efficientnet_lite0/2); {type(backbone).__name__} does not (config key seg.backbone)")
            losses[name] = Contextrast(backbone.stage_channels, num_classes, cfg.dim, ctx.temperature,
                                       ctx.layer_weights, ctx.anchor_weights, ctx.negative_fraction)
            weights[name] = ctx.weight
    return ContrastLoss(losses, weights, cfg.warmup_iters)
