"""DeepLab-v2 (Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets,
Atrous Convolution, and Fully Connected CRFs", TPAMI 2018, arXiv:1606.00915): a dilated backbone, the ASPP-L head
(Sec. 3.2, Fig. 4) and multi-scale input fusion (MSC, Sec. 4.1).

Models return logits at feature resolution (``ceil(H / output_stride)``); the caller resizes them
to the label size, e.g. ``F.interpolate(out["logits"], size=labels.shape[-2:], mode="bilinear",
align_corners=False)`` before the cross-entropy, and likewise for predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from rca.models import backbones


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling of DeepLab-v2 (ASPP-L, Sec. 3.2): parallel 3x3 convolutions
    with different dilation rates mapping features straight to class scores; their outputs are
    summed. Weights are initialised N(0, 0.01) and biases 0, as in the released prototxt.

    Args:
        in_channels: channels of the backbone features.
        num_classes: number of output classes.
        atrous_rates: dilation (= padding) of each branch; DeepLab-v2 uses (6, 12, 18, 24).

    Forward: ``(B, in_channels, h, w)`` -> ``(B, num_classes, h, w)`` unnormalised logits.

    Raises:
        ValueError: ``atrous_rates`` is empty or has a rate < 1.
    """

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        if not atrous_rates or min(atrous_rates) < 1:
            raise ValueError(f"atrous_rates must be a non-empty list of integers >= 1, got {atrous_rates!r}")
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate) for rate in atrous_rates
        )
        for branch in self.branches:
            nn.init.normal_(branch.weight, mean=0.0, std=0.01)
            nn.init.zeros_(branch.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabV2(nn.Module):
    """DeepLab-v2: ``backbone`` (dilated, see :func:`rca.models.backbones.build_backbone`) + ASPP.

    Args:
        backbone: module with an ``out_channels`` attribute mapping ``(B, 3, H, W)`` to
            ``(B, out_channels, h, w)``.
        num_classes: number of output classes (background included when the dataset has one).
        atrous_rates: ASPP dilation rates.

    Forward: ``images`` ``(B, 3, H, W)`` float, ImageNet-normalised, and ``return_stages`` (default
    False) -> dict with
        ``"logits"``: ``(B, num_classes, h, w)`` unnormalised class scores at feature resolution;
        ``"features"``: ``(B, backbone.out_channels, h, w)`` backbone features (input of
        contrastive losses and projection heads);
        only with ``return_stages=True``, ``"stages"``: the backbone's 4 stage maps, shallow to
        deep (``backbone.forward_stages``, the last is ``"features"``), for multi-layer losses.
        Projection heads live with the losses (:func:`rca.losses.build_contrast`), not here, so
        inference and exported checkpoints carry none of them.

    Raises:
        NotImplementedError: ``return_stages=True`` with a backbone that does not expose its stages
            (VGG-16, ResNet-38).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, atrous_rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(backbone.out_channels, num_classes, atrous_rates)

    def forward(self, images: torch.Tensor, return_stages: bool = False) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        if not return_stages:
            features = self.backbone(images)
            return {"logits": self.aspp(features), "features": features}
        if not hasattr(self.backbone, "forward_stages"):
            raise NotImplementedError(
                f"backbone {type(self.backbone).__name__} does not expose its stages; multi-layer losses "
                f"(Contextrast) need resnet18/50/101 or efficientnet_lite0/2 (config key seg.backbone)"
            )
        stages = self.backbone.forward_stages(images)
        return {"logits": self.aspp(stages[-1]), "features": stages[-1], "stages": stages}


class MSC(nn.Module):
    """Multi-scale inputs with max fusion (DeepLab-v2 Sec. 4.1, "MSC"): the model runs on the
    image at scale 1 and at each of ``scales`` (bilinear resize); the logits of the smaller
    inputs are resized (bilinear) to the scale-1 logit size and fused by a pixel-wise max.

    Training and evaluation both predict with the fused logits (as DeepLab-v2's test net does).
    In training the per-scale logits are returned too, so the trainer sums a loss over all four
    outputs (each upsampled to the label size): the fused and the three per-scale logits.

    Args:
        model: a :class:`DeepLabV2`, kept as ``self.base``.
        scales: input scales besides 1, each in (0, 1]; DeepLab-v2 uses (0.75, 0.5).

    Forward: ``images`` ``(B, 3, H, W)`` -> dict with
        ``"logits"``: ``(B, C, h, w)`` max-fused logits at the scale-1 logit size ``(h, w)``;
        ``"features"``: scale-1 backbone features ``(B, C_backbone, h, w)``;
        with ``return_stages=True``, ``"stages"``: the scale-1 backbone stages (see
        :class:`DeepLabV2`);
        training mode only, ``"logits_scales"``: list of the logits at scale 1 then at each
        of ``scales``, each at its own resolution ``ceil(floor(s * H) / output_stride)``.

    Raises:
        ValueError: a scale outside (0, 1].
    """

    def __init__(self, model: DeepLabV2, scales: Sequence[float] = (0.75, 0.5)) -> None:
        super().__init__()
        if any(not 0 < s <= 1 for s in scales):
            raise ValueError(f"MSC scales must lie in (0, 1], got {scales!r}")
        self.base = model
        self.scales = tuple(scales)

    @property
    def backbone(self) -> nn.Module:
        """The wrapped model's backbone (every model exposes ``backbone``, see ``backbones``)."""
        return self.base.backbone

    def forward(self, images: torch.Tensor, return_stages: bool = False) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        out = self.base(images, return_stages)
        logits = [out["logits"]]
        for scale in self.scales:
            scaled = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
            logits.append(self.base(scaled)["logits"])
        size = logits[0].shape[-2:]
        resized = [logits[0]] + [F.interpolate(x, size, mode="bilinear", align_corners=False) for x in logits[1:]]
        result = {"logits": torch.stack(resized).amax(dim=0), "features": out["features"]}
        if return_stages:
            result["stages"] = out["stages"]
        if self.training:
            result["logits_scales"] = logits
        return result


def build_deeplab(
    num_classes: int,
    backbone: str = "resnet101",
    output_stride: int = 8,
    pretrained: str = "none",
    multi_scale: bool = False,
    freeze_bn: bool = True,
    frozen_stages: int = 0,
    atrous_rates: Sequence[int] = (6, 12, 18, 24),
) -> nn.Module:
    """Build DeepLab-v2 (:class:`DeepLabV2`, wrapped in :class:`MSC` when ``multi_scale``).

    Args:
        num_classes: number of output classes, >= 1.
        backbone, output_stride, pretrained: see :func:`rca.models.backbones.build_backbone`.
        multi_scale: wrap in :class:`MSC` (scales 1, 0.75, 0.5).
        freeze_bn: replace the batch norms by frozen ones (:func:`rca.models.backbones.freeze_bn`),
            DeepLab-v2's default.
        frozen_stages: backbone stages kept fixed (see :func:`rca.models.backbones.build_backbone`).
        atrous_rates: ASPP dilation rates.

    Raises:
        ValueError: ``num_classes`` < 1, or any error of ``build_backbone`` / :class:`ASPP`.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model = DeepLabV2(backbones.build_backbone(backbone, output_stride, pretrained, frozen_stages), num_classes, atrous_rates)
    if freeze_bn:
        backbones.freeze_bn(model)
    return MSC(model) if multi_scale else model


def deeplab_args(cfg, num_classes: int) -> dict:
    """Keyword arguments of :func:`build_deeplab` from a ``seg`` config section
    (:class:`rca.config.SegConfig`); checkpoints store them as ``model_args``."""
    return dict(num_classes=num_classes, backbone=cfg.backbone, output_stride=cfg.output_stride,
                pretrained=cfg.pretrained, multi_scale=cfg.multi_scale, freeze_bn=cfg.freeze_bn,
                frozen_stages=cfg.frozen_stages)


def deeplab_param_groups(model: nn.Module, lr: float) -> list[dict]:
    """SGD parameter groups with DeepLab-v2's learning-rate multipliers (released prototxt
    ``lr_mult``/``decay_mult``): backbone 1x, new-layer weights 10x, new-layer biases 20x with no
    weight decay. New layers are all parameters outside ``model.backbone`` (the ASPP, and any head
    added later), so an :class:`MSC` wrapper works as is.

    Parameters with ``requires_grad=False`` are left out, and so are groups left empty. Each group
    has ``"params"``, ``"lr"`` (``lr * lr_mult``) and ``"lr_mult"`` (1, 10 or 20) for a poly
    schedule to scale; the 20x group also has ``"weight_decay": 0.0`` (the others take the
    optimizer's default). Build the groups from the bare model (``ddp_model.module``).

    Raises:
        TypeError: ``model`` has no ``backbone`` submodule.
    """
    if not isinstance(getattr(model, "backbone", None), nn.Module):
        raise TypeError(f"{type(model).__name__} has no 'backbone' submodule; pass a DeepLabV2 or MSC model")
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    groups = {1: [], 10: [], 20: []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        mult = 1 if id(param) in backbone_ids else 20 if name.endswith("bias") else 10
        groups[mult].append(param)
    param_groups = []
    for mult, params in groups.items():
        if params:
            group = {"params": params, "lr": lr * mult, "lr_mult": mult}
            if mult == 20:
                group["weight_decay"] = 0.0
            param_groups.append(group)
    return param_groups
