"""EfficientNet-Lite backbones: the packaged ImageNet weights land on the right layers (features
and logits equal the package's own model), a trous output strides, stages, frozen stages and BN,
the offline error for torchvision's download."""

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d
from torch.nn import functional as F

from rca.models import build_backbone, build_classifier, build_deeplab, deeplab_param_groups, freeze_bn
from rca.models.efficientnet import NATIVE_SIZE, packaged_state_dict, packaged_weights_path

efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")

MSRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "msrc_v2"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _image(size: int) -> torch.Tensor:
    """A real MSRC photo (an aeroplane, ``4_17_s``) resized to ``size`` x ``size``, ImageNet-normalised
    ``(1, 3, size, size)``; a fixed random image when the shared data is absent."""
    path = MSRC / "images" / "4_17_s.png"
    if path.is_file():
        pixels = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR), np.float32)
        x = torch.from_numpy(pixels / 255).permute(2, 0, 1)[None]
    else:
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def _reference(name: str):
    """The package's own model (efficientnet_pytorch code, static TF padding for the native size)
    with the packaged weights; it expects inputs scaled to [-1, 1]."""
    model = efficientnet_lite_pytorch.EfficientNet.from_name(name.replace("_", "-"))
    model.load_state_dict(torch.load(packaged_weights_path(name), map_location="cpu", weights_only=True))
    return model.eval()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_features_and_logits_equal_the_packaged_model(name):
    size = NATIVE_SIZE[name]
    x = _image(size)
    backbone = build_backbone(name, output_stride=32, pretrained="imagenet").eval()
    reference = _reference(name)
    state = packaged_state_dict(name)
    with torch.no_grad():
        features = backbone(x)
        x_tf = (x * IMAGENET_STD + IMAGENET_MEAN - 0.5) / 0.5
        expected = reference.extract_features(x_tf)
        logits = F.linear(features.mean((2, 3)), state["classifier.weight"], state["classifier.bias"])
        expected_logits = reference(x_tf)
    assert features.shape == (1, 1280, -(-size // 32), -(-size // 32))
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)
    if MSRC.is_dir():  # an aeroplane: ImageNet's airliner (404) among the top 5 of both models
        assert 404 in logits.topk(5).indices[0].tolist()


def test_weights_are_loaded_not_random():
    pretrained = build_backbone("efficientnet_lite0", output_stride=32, pretrained="imagenet")
    random = build_backbone("efficientnet_lite0", output_stride=32, pretrained="none")
    state = packaged_state_dict("efficientnet_lite0")
    torch.testing.assert_close(pretrained.blocks[3][1].conv_dw.weight, state["blocks.3.1.conv_dw.weight"])
    assert torch.equal(pretrained.bn2.running_var, torch.load(
        packaged_weights_path("efficientnet_lite0"), weights_only=True)["_bn1.running_var"])
    assert not torch.allclose(random.conv_head.weight, pretrained.conv_head.weight)


@pytest.mark.parametrize("size, even", [(224, True), (225, False)])
def test_dilated_features_on_the_coarse_grid(size, even):
    """TF 'same' padding: on even sizes a stride-2 conv's output i is centred on input 2i + 1, so
    out(os=16)[1::2] == out(os=32) (out(os=8)[3::4]); on odd sizes the padding is symmetric and
    out(os=16)[::2] == out(os=32) like the ResNets."""
    x = _image(size)
    reference = build_backbone("efficientnet_lite0", output_stride=32, pretrained="imagenet").eval()
    with torch.no_grad():
        out32 = reference(x)
    for stride in (16, 8):
        model = build_backbone("efficientnet_lite0", output_stride=stride, pretrained="imagenet").eval()
        with torch.no_grad():
            out = model(x)
        step = 32 // stride
        assert out.shape[-2:] == (-(-size // stride),) * 2
        start = step - 1 if even else 0
        torch.testing.assert_close(out[..., start::step, start::step], out32, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, channels", [("efficientnet_lite0", (24, 40, 112, 1280)),
                                            ("efficientnet_lite2", (24, 48, 120, 1280))])
@pytest.mark.parametrize("output_stride, strides", [(32, (4, 8, 16, 32)), (16, (4, 8, 16, 16)), (8, (4, 8, 8, 8))])
def test_stages(name, channels, output_stride, strides):
    backbone = build_backbone(name, output_stride=output_stride).eval()
    assert backbone.stage_channels == channels and backbone.stage_strides == strides
    assert backbone.out_channels == 1280 and backbone.output_stride == output_stride
    x = torch.randn(1, 3, 70, 50)
    with torch.no_grad():
        stages = backbone.forward_stages(x)
        last = backbone(x)
    assert [s.shape for s in stages] == [(1, c, -(-70 // s), -(-50 // s)) for c, s in zip(channels, strides)]
    assert torch.equal(stages[-1], last)


def test_frozen_stages_fix_the_early_layers():
    backbone = build_backbone("efficientnet_lite2", output_stride=16, pretrained="imagenet").eval()
    frozen = build_backbone("efficientnet_lite2", output_stride=16, pretrained="imagenet", frozen_stages=2)
    x = _image(96)
    with torch.no_grad():
        expected = backbone.forward_stages(x)
    frozen.train()  # the frozen stages ignore train mode: same maps as the eval-mode original
    with torch.no_grad():
        torch.testing.assert_close(frozen.forward_stages(x)[1], expected[1], rtol=1e-4, atol=1e-4)
    trainable = {n for n, p in frozen.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("blocks.3", "blocks.4", "blocks.5", "blocks.6", "conv_head", "bn2"))
                             for n in trainable)
    assert not any(isinstance(m, BatchNormAct2d) for m in frozen.blocks[:3].modules())
    deeplab = build_deeplab(3, "efficientnet_lite2", 16, "none", freeze_bn=False, frozen_stages=4)
    grouped = {id(p) for group in deeplab_param_groups(deeplab, 0.1) for p in group["params"]}
    assert grouped == {id(p) for p in deeplab.aspp.parameters()}
    with pytest.raises(ValueError, match="frozen_stages"):
        build_backbone("efficientnet_lite0", frozen_stages=5)
    with pytest.raises(ValueError, match="frozen_stages"):
        build_backbone("resnet18", frozen_stages=1)


def test_freeze_bn_keeps_the_activation():
    """timm's BN+activation layers become frozen ones that still apply ReLU6 (the outputs of an
    eval-mode network do not change), and stay fixed in train mode."""
    backbone = build_backbone("efficientnet_lite0", output_stride=32, pretrained="imagenet").eval()
    x = _image(64)
    with torch.no_grad():
        expected = backbone(x)
    freeze_bn(backbone).train()
    assert not any(isinstance(m, BatchNormAct2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNormAct2d) for m in backbone.modules())
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), expected, rtol=1e-4, atol=1e-4)
    model = build_classifier(4, "efficientnet_lite0", 16, method="cam", freeze_bn=True)
    assert not any(isinstance(m, BatchNormAct2d) for m in model.backbone.modules())


def test_torchvision_download_failure_names_the_offline_options(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"pretrained=PATH.*efficientnet_lite0, efficientnet_lite2"):
        build_backbone("resnet18", output_stride=32, pretrained="imagenet")
