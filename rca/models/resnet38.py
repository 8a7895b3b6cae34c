"""ResNet-38: the wide pre-activation ResNet (model A1) of Wu, Shen and van den Hengel, "Wider or
Deeper: Revisiting the ResNet Model for Visual Recognition" (Pattern Recognition 2019), in the
dilated output-stride-8 layout that PSA (Ahn & Kwak, CVPR 2018, arXiv:1803.10464, jiwoon-ahn/psa
``network/resnet38d.py``) and its successors (IRN, SEAM, EPS, ...) use for WSSS.

Layout (``(B, 3, H, W)`` -> ``(B, 4096, ceil(H/8), ceil(W/8))``):

=========  =======================================  ==========================  ========
stage      blocks                                   channels (in -> mid -> out)  dilation
=========  =======================================  ==========================  ========
conv1a     3x3 conv, stride 1                       3 -> 64                     1
b2         3 basic blocks, first has stride 2       64 -> 128 -> 128            1
b3         3 basic blocks, first has stride 2       128 -> 256 -> 256           1
b4         6 basic blocks, first has stride 2       256 -> 512 -> 512           1
b5         3 basic blocks, stride 1                 512 -> 512 -> 1024          2 (b5's first conv: 1)
b6         1 bottleneck, dropout 0.3                1024 -> 512 -> 1024 -> 2048  4
b7         1 bottleneck, dropout 0.5                2048 -> 1024 -> 2048 -> 4096 4
bn7, relu  final pre-activation                     4096                        -
=========  =======================================  ==========================  ========

Module and parameter names (``conv1a``, ``b4_3.bn_branch2b1``, ``bn7``, ...) are those of the
MXNet model converted to PyTorch by PSA's ``convert_mxnet_to_torch``, so that converted checkpoint
(``ilsvrc-cls_rna-a1_cls1000_ep-0001.params`` after conversion) loads with ``load_state_dict``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F


class ResBlock(nn.Module):
    """Pre-activation residual block with two 3x3 convolutions (BN-ReLU-conv-BN-ReLU-conv).

    The shortcut is the raw input when the shape is kept, else a strided 1x1 convolution of the
    pre-activated input ``relu(bn_branch2a(x))`` (PSA's rule).

    Args:
        in_channels, mid_channels, out_channels: channels of the input, after the first conv, and
            of the output.
        stride: stride of the first 3x3 conv and of the shortcut conv.
        dilation: dilation of the second 3x3 conv (and of the first unless ``first_dilation``).
        first_dilation: dilation of the first 3x3 conv; defaults to ``dilation``.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
    ) -> None:
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(
            in_channels, mid_channels, 3, stride, padding=first_dilation, dilation=first_dilation, bias=False
        )
        self.bn_branch2b1 = nn.BatchNorm2d(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(mid_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv_branch1 = (
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
            if in_channels != out_channels or stride != 1
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, ceil(H/stride), ceil(W/stride))``."""
        pre = F.relu(self.bn_branch2a(x), inplace=True)
        shortcut = x if self.conv_branch1 is None else self.conv_branch1(pre)
        out = F.relu(self.bn_branch2b1(self.conv_branch2a(pre)), inplace=True)
        return shortcut + self.conv_branch2b1(out)


class BottleneckBlock(nn.Module):
    """Pre-activation bottleneck block (1x1 -> dilated 3x3 -> 1x1, widths out/4 -> out/2 -> out)
    with channel dropout (``nn.Dropout2d``) before the 3x3 and the last 1x1 conv.

    The shortcut is a 1x1 convolution of the pre-activated input when the shape changes, else the
    raw input.

    Args:
        in_channels, out_channels: channels of the input and output (``out_channels`` divisible by 4).
        dilation: dilation of the 3x3 conv.
        dropout: channel dropout probability in [0, 1).
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, out_channels // 4, 1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_channels // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(
            out_channels // 4, out_channels // 2, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn_branch2b2 = nn.BatchNorm2d(out_channels // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_channels // 2, out_channels, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``."""
        pre = F.relu(self.bn_branch2a(x), inplace=True)
        shortcut = x if self.conv_branch1 is None else self.conv_branch1(pre)
        out = self.conv_branch2a(pre)
        out = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(out), inplace=True)))
        out = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(out), inplace=True)))
        return shortcut + out


class ResNet38(nn.Sequential):
    """Wide ResNet-38 (model A1) feature extractor, output stride 8 (see the module docstring).

    Forward: ``(B, 3, H, W)`` float, ImageNet-normalised -> ``(B, 4096, ceil(H/8), ceil(W/8))``,
    non-negative (ends with BN + ReLU).

    Attributes:
        out_channels: 4096.
        output_stride: 8.
    """

    out_channels = 4096
    output_stride = 8

    def __init__(self) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(conv1a=nn.Conv2d(3, 64, 3, padding=1, bias=False))
        # (stage, in, mid, out, blocks, stride, dilation, first_dilation)
        stages = [(2, 64, 128, 128, 3, 2, 1, 1), (3, 128, 256, 256, 3, 2, 1, 1),
                  (4, 256, 512, 512, 6, 2, 1, 1), (5, 512, 512, 1024, 3, 1, 2, 1)]  # fmt: skip
        for stage, in_ch, mid_ch, out_ch, blocks, stride, dilation, first_dilation in stages:
            layers[f"b{stage}"] = ResBlock(in_ch, mid_ch, out_ch, stride, dilation, first_dilation)
            for i in range(1, blocks):
                layers[f"b{stage}_{i}"] = ResBlock(out_ch, mid_ch, out_ch, dilation=dilation)
        layers["b6"] = BottleneckBlock(1024, 2048, dilation=4, dropout=0.3)
        layers["b7"] = BottleneckBlock(2048, 4096, dilation=4, dropout=0.5)
        layers["bn7"] = nn.BatchNorm2d(4096)
        layers["relu"] = nn.ReLU(inplace=True)
        super().__init__(layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
