"""Backbones (output size, a trous dilation, checkpoints, frozen BN) and DeepLab-v2 (ASPP, MSC,
parameter groups)."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops.misc import FrozenBatchNorm2d

from rca.models import (
    ASPP,
    MSC,
    DeepLabV2,
    build_backbone,
    build_deeplab,
    deeplab_param_groups,
    freeze_bn,
    load_backbone_weights,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _expected_size(side: int, stride: int) -> int:
    return math.ceil(side / stride)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_output_shapes_and_a_trous_equivalence(name):
    """The dilated network computes the strided one's features on a finer grid (same weights):
    out(os=16)[::2, ::2] == out(os=32) and out(os=8)[::4, ::4] == out(os=32) in eval mode."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 65, 47)
    reference = build_backbone(name, output_stride=32).eval()
    with torch.no_grad():
        out32 = reference(x)
    assert out32.shape == (2, reference.out_channels, _expected_size(65, 32), _expected_size(47, 32))
    for stride in (16, 8):
        model = build_backbone(name, output_stride=stride).eval()
        model.load_state_dict(reference.state_dict())
        with torch.no_grad():
            out = model(x)
        assert model.output_stride == stride
        assert out.shape == (2, reference.out_channels, _expected_size(65, stride), _expected_size(47, stride))
        step = 32 // stride
        # float32 sums in another order (dilated vs strided convolutions): tolerance relative to the scale
        torch.testing.assert_close(out[..., ::step, ::step], out32, rtol=1e-4, atol=1e-5 * out32.abs().max().item())


def test_resnet_dilation_layout():
    r50 = build_backbone("resnet50", output_stride=8)
    assert r50.out_channels == 2048
    assert r50.layer4[1].conv2.dilation == (4, 4) and r50.layer4[1].conv2.padding == (4, 4)
    assert r50.layer4[0].conv2.dilation == (2, 2) and r50.layer4[0].conv2.stride == (1, 1)
    assert r50.layer3[0].downsample[0].stride == (1, 1)
    r18 = build_backbone("resnet18", output_stride=16)
    assert r18.out_channels == 512
    assert r18.layer3[0].conv1.stride == (2, 2) and r18.layer3[0].conv1.dilation == (1, 1)
    assert r18.layer4[0].conv1.stride == (1, 1) and r18.layer4[0].conv1.dilation == (1, 1)
    assert r18.layer4[0].conv2.dilation == (2, 2) and r18.layer4[1].conv1.dilation == (2, 2)
    assert r18.layer4[0].downsample[0].stride == (1, 1)


def test_resnet101_output_shape():
    model = build_backbone("resnet101", output_stride=8).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 33, 33))
    assert out.shape == (1, 2048, 5, 5)


def test_vgg16_layout_and_shape():
    model = build_backbone("vgg16", output_stride=8).eval()
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(convs) == 13 and len(pools) == 4
    assert [c.dilation for c in convs] == [(1, 1)] * 10 + [(2, 2)] * 3
    assert pools[3].stride == 1 and pools[3].kernel_size == 3
    with torch.no_grad():
        out = model(torch.randn(2, 3, 65, 64))
    assert out.shape == (2, 512, 9, 8)
    assert (out >= 0).all()
    with pytest.raises(ValueError, match=r"output_stride=16.*\[8\]"):
        build_backbone("vgg16", output_stride=16)


def test_resnet38_layout_and_shape():
    model = build_backbone("resnet38", output_stride=8).eval()
    assert model.out_channels == 4096
    assert model.b5.conv_branch2a.dilation == (1, 1) and model.b5.conv_branch2b1.dilation == (2, 2)
    assert model.b6.conv_branch2b1.dilation == (4, 4) and model.b7.dropout_2b1.p == 0.5
    assert model.b2_1.conv_branch1 is None and model.b4.conv_branch1.stride == (2, 2)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 33, 30))
    assert out.shape == (1, 4096, 5, 4)
    assert (out >= 0).all()
    with pytest.raises(ValueError, match="pretrained=PATH"):
        build_backbone("resnet38", output_stride=8, pretrained="imagenet")


def test_bad_names_and_strides():
    with pytest.raises(ValueError, match="resnet101"):
        build_backbone("resnet34")
    with pytest.raises(ValueError, match=r"\[32, 16, 8\]"):
        build_backbone("resnet50", output_stride=4)
    with pytest.raises(FileNotFoundError, match="no_such_file.pt"):
        build_backbone("resnet18", pretrained="no_such_file.pt")


def test_checkpoint_round_trip(tmp_path):
    source = build_backbone("resnet18", output_stride=8).eval()
    for m in source.modules():  # non-trivial statistics, so that a missed BN buffer shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    state = source.state_dict()
    state["fc.weight"] = torch.zeros(1000, 512)  # classifier keys are dropped
    torch.save({"model": state}, tmp_path / "wrapped.pt")
    x = torch.randn(1, 3, 40, 40)
    loaded = build_backbone("resnet18", output_stride=8, pretrained=str(tmp_path / "wrapped.pt")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)

    # A bare state dict without num_batches_tracked (as converted MXNet/Caffe weights) loads too.
    bare = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(bare, tmp_path / "bare.pt")
    fresh = build_backbone("resnet18", output_stride=8).eval()
    load_backbone_weights(fresh, tmp_path / "bare.pt")
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), source(x), rtol=0, atol=0)


def test_checkpoint_mismatch_errors(tmp_path):
    state = build_backbone("resnet18", output_stride=8).state_dict()
    del state["layer4.1.conv2.weight"]
    state["head.weight"] = torch.zeros(3)
    torch.save({"state_dict": state}, tmp_path / "bad_keys.pt")
    with pytest.raises(ValueError, match=r"bad_keys\.pt.*1 missing keys.*layer4\.1\.conv2\.weight.*head\.weight"):
        build_backbone("resnet18", output_stride=8, pretrained=str(tmp_path / "bad_keys.pt"))

    other = build_backbone("resnet50", output_stride=8).state_dict()
    torch.save(other, tmp_path / "resnet50.pt")
    with pytest.raises(ValueError, match=r"resnet50\.pt.*wrong shape"):
        build_backbone("resnet18", output_stride=8, pretrained=str(tmp_path / "resnet50.pt"))

    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt.*state dict"):
        build_backbone("resnet18", pretrained=str(tmp_path / "list.pt"))


def test_aspp_is_sum_of_dilated_branches():
    aspp = ASPP(8, 5, atrous_rates=(1, 2, 3))
    for branch in aspp.branches:  # default init has zero bias; make the bias part of the check
        nn.init.normal_(branch.bias)
    assert all(abs(b.weight.std().item() - 0.01) < 0.005 for b in aspp.branches)
    x = torch.randn(2, 8, 9, 11)
    expected = sum(
        F.conv2d(x, b.weight, b.bias, padding=rate, dilation=rate) for b, rate in zip(aspp.branches, (1, 2, 3))
    )
    out = aspp(x)
    assert out.shape == (2, 5, 9, 11)
    torch.testing.assert_close(out, expected)
    # A single 1x1 input: only the centre tap of each branch sees data.
    centre = torch.randn(1, 8, 1, 1)
    by_hand = sum(b.weight[:, :, 1, 1] @ centre[0, :, 0, 0] + b.bias for b in aspp.branches)
    torch.testing.assert_close(aspp(centre)[0, :, 0, 0], by_hand)
    assert ASPP(4, 2).branches[3].dilation == (24, 24)
    with pytest.raises(ValueError, match="atrous_rates"):
        ASPP(4, 2, atrous_rates=())


def test_freeze_bn_survives_train_mode():
    model = build_deeplab(3, backbone="resnet18", output_stride=16, freeze_bn=True)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert all(len(list(m.parameters())) == 0 for m in frozen)
    statistics = [m.running_var.clone() for m in frozen]

    x = torch.randn(2, 3, 33, 33)
    model.eval()
    with torch.no_grad():
        eval_out = model(x)["logits"]
    model.train()
    train_out = model(x)["logits"]
    torch.testing.assert_close(train_out, eval_out)
    train_out.sum().backward()
    assert all(torch.equal(m.running_var, s) for m, s in zip(frozen, statistics))
    assert model.backbone.conv1.weight.grad is not None


def test_freeze_bn_copies_statistics():
    bn = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), bn)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        expected = net(x)
    frozen = freeze_bn(net)
    assert frozen is net and isinstance(net[1], FrozenBatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(net.train()(x), expected)
    with pytest.raises(ValueError, match="track_running_stats"):
        freeze_bn(nn.BatchNorm2d(4, track_running_stats=False))


def test_deeplab_output_and_param_groups():
    model = build_deeplab(5, backbone="resnet18", output_stride=8, freeze_bn=True)
    out = model(torch.randn(2, 3, 65, 65))
    assert out["logits"].shape == (2, 5, 9, 9) and out["features"].shape == (2, 512, 9, 9)

    model.backbone.conv1.weight.requires_grad_(False)  # a frozen stem is left out
    groups = deeplab_param_groups(model, lr=0.01)
    by_mult = {g["lr_mult"]: g for g in groups}
    assert sorted(by_mult) == [1, 10, 20]
    assert all(g["lr"] == pytest.approx(0.01 * g["lr_mult"]) for g in groups)
    assert by_mult[20]["weight_decay"] == 0.0 and "weight_decay" not in by_mult[10]
    assert {id(p) for p in by_mult[10]["params"]} == {id(b.weight) for b in model.aspp.branches}
    assert {id(p) for p in by_mult[20]["params"]} == {id(b.bias) for b in model.aspp.branches}
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(set(grouped)) and set(grouped) == set(trainable)
    assert id(model.backbone.conv1.weight) not in grouped
    torch.optim.SGD(groups, lr=0.01, momentum=0.9, weight_decay=5e-4)  # accepted by the optimizer


def test_msc_training_and_eval_outputs():
    model = build_deeplab(4, backbone="resnet18", output_stride=8, multi_scale=True)
    assert isinstance(model, MSC) and isinstance(model.base, DeepLabV2)
    assert model.backbone is model.base.backbone
    x = torch.randn(2, 3, 65, 65)
    model.train()
    out = model(x)
    per_scale = out["logits_scales"]
    # inputs of 65, floor(0.75 * 65) = 48 and floor(0.5 * 65) = 32 pixels; outputs ceil(side / 8)
    assert [tuple(l.shape) for l in per_scale] == [(2, 4, 9, 9), (2, 4, 6, 6), (2, 4, 4, 4)]
    assert out["logits"].shape == (2, 4, 9, 9) and out["features"].shape == (2, 512, 9, 9)
    resized = [per_scale[0]] + [F.interpolate(l, (9, 9), mode="bilinear", align_corners=False) for l in per_scale[1:]]
    torch.testing.assert_close(out["logits"], torch.maximum(torch.maximum(resized[0], resized[1]), resized[2]))

    model.eval()
    with torch.no_grad():
        eval_out = model(x)
    assert "logits_scales" not in eval_out
    torch.testing.assert_close(eval_out["logits"], out["logits"].detach())  # frozen BN: same in both modes

    groups = deeplab_param_groups(model, lr=1.0)
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])
    with pytest.raises(TypeError, match="backbone"):
        deeplab_param_groups(nn.Linear(2, 2), lr=1.0)
