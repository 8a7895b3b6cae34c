"""Tests of the segmentation-stage contrast wiring: backbone stages, DeepLab ``return_stages``,
``build_contrast`` from the config, gradient routing, warm-up, and the losses under DDP (2 gloo
processes)."""

import pytest
import torch
import torch.nn.functional as F

from helpers import spawn_gloo
from rca.config import load_config
from rca.engine.distributed import all_gather_rows, all_reduce_sum
from rca.losses import PixelContrast, RegionContrast, build_contrast, class_anchors, info_nce
from rca.models import build_backbone, build_deeplab


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_resnet_stages_shapes_and_last_equals_forward(output_stride):
    backbone = build_backbone("resnet18", output_stride).eval()
    x = torch.randn(1, 3, 33, 47)
    stages = backbone.forward_stages(x)
    assert backbone.stage_channels == (64, 128, 256, 512)
    assert backbone.stage_strides == (4, 8, min(16, output_stride), output_stride)
    for stage, channels, stride in zip(stages, backbone.stage_channels, backbone.stage_strides):
        assert stage.shape == (1, channels, -(-33 // stride), -(-47 // stride))
    assert torch.equal(stages[-1], backbone(x))
    assert build_backbone("resnet50", 8).stage_channels == (256, 512, 1024, 2048)


def test_deeplab_returns_stages_only_when_asked():
    model = build_deeplab(3, "resnet18", 8, multi_scale=True).eval()
    x = torch.randn(1, 3, 32, 32)
    plain, with_stages = model(x), model(x, return_stages=True)
    assert "stages" not in plain and len(with_stages["stages"]) == 4
    assert torch.equal(plain["logits"], with_stages["logits"])
    assert torch.equal(with_stages["stages"][-1], with_stages["features"])
    with pytest.raises(NotImplementedError, match="resnet18/50/101"):
        build_deeplab(3, "vgg16", 8)(x, return_stages=True)


def contrast_config(*overrides):
    return load_config(None, list(overrides)).seg.contrast


def test_build_contrast_selects_losses_from_config():
    backbone = build_backbone("resnet18", 16)
    assert len(build_contrast(contrast_config(), 4, backbone, 10).losses) == 0
    cfg = contrast_config("seg.contrast.losses=[pixel_memory,region,contextrast]", "seg.contrast.pixel.memory_size=7")
    contrast = build_contrast(cfg, 4, backbone, 10)
    assert list(contrast.losses) == ["pixel_memory", "region", "contextrast"] and contrast.needs_stages
    assert contrast.losses["pixel_memory"].pixel_memory.size == 7
    assert contrast.losses["region"].memory.size == 10  # default: the number of training images
    with pytest.raises(ValueError, match="seg.contrast.losses"):
        build_contrast(contrast_config("seg.contrast.losses=[pixels]"), 4, backbone, 10)
    with pytest.raises(NotImplementedError, match="Contextrast"):
        build_contrast(contrast_config("seg.contrast.losses=[contextrast]"), 4, build_backbone("vgg16", 8), 10)


def test_contrast_gradients_reach_backbone_and_heads_only_and_warmup_zeroes_weights():
    torch.manual_seed(0)
    model = build_deeplab(3, "resnet18", 16)
    cfg = contrast_config("seg.contrast.losses=[pixel,region,contextrast]", "seg.contrast.warmup_iters=2",
                          "seg.contrast.pixel.max_views=4")
    contrast = build_contrast(cfg, 3, model.backbone, 8)
    images = torch.randn(2, 3, 64, 64)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, 32:] = 1
    labels[1, :, :20] = 2
    for iteration in (0, 2):
        model.zero_grad(set_to_none=True)
        contrast.zero_grad(set_to_none=True)
        terms = contrast(model(images, return_stages=True), labels, iteration)
        assert set(terms) == {"pixel", "region", "contextrast"}
        sum(terms.values()).backward()
        assert all(p.grad is None for p in model.aspp.parameters())  # the classifier: untouched
        head_grads = [p.grad for p in contrast.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in head_grads)
        if iteration == 0:  # warm-up: weight 0, every gradient zero
            assert all(t.item() == 0 for t in terms.values())
            assert all(g.abs().sum() == 0 for g in head_grads)
    assert terms["pixel"] > 0 and terms["contextrast"] > 0
    assert model.backbone.layer1[0].conv1.weight.grad.abs().sum() > 0  # Contextrast reaches layer1
    assert not any(k.startswith(("losses", "head")) for k in model.state_dict())  # heads are not exported


# ---- DDP: two gloo processes ------------------------------------------------------------------

def rank_data(rank):
    """Per-rank inputs (different sizes on the two ranks), reproducible in the parent process."""
    generator = torch.Generator().manual_seed(10 + rank)
    n = 5 + 3 * rank
    anchors = F.normalize(torch.randn(n, 4, generator=generator), dim=1)
    anchor_labels = torch.randint(0, 3, (n,), generator=generator)
    embeddings = torch.randn(1 + rank, 4, 3, 3, generator=generator)
    labels = torch.randint(0, 3, (1 + rank, 3, 3), generator=generator)
    return anchors, anchor_labels, embeddings, labels


def _ddp_worker(rank, world_size, out_dir):
    anchors, anchor_labels, embeddings, labels = rank_data(rank)
    rows = torch.full((2 + rank, 2), float(rank))
    gathered, = all_gather_rows(rows)
    total = all_reduce_sum(torch.tensor([rank + 1.0], requires_grad=True), keep_local_grad=True)
    total.backward()
    torch.manual_seed(0)
    pixel = PixelContrast(in_channels=4, num_classes=3, dim=4)
    queries = anchors.clone().requires_grad_()
    pixel_loss = pixel._in_batch(queries, anchor_labels)
    pixel_loss.backward()
    means, present = class_anchors(embeddings, labels, 3)
    region = RegionContrast(in_channels=4, num_classes=3, memory_size=8, dim=4)
    region.memory.push(anchors, anchor_labels)
    torch.save({"gathered": gathered, "total": total.detach(), "pixel_loss": pixel_loss.detach(),
                "query_grad": queries.grad, "means": means, "present": present,
                "memory": region.memory.state_dict()}, f"{out_dir}/rank{rank}.pt")


def test_losses_all_gather_under_ddp(tmp_path):
    spawn_gloo(_ddp_worker, 2, tmp_path, str(tmp_path))
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    data = [rank_data(r) for r in range(2)]
    assert results[0]["gathered"].tolist() == [[0.0, 0.0]] * 2 + [[1.0, 1.0]] * 3
    assert all(r["total"].item() == 3.0 for r in results)
    # pixel contrast: each rank's anchors against the anchors of both ranks, self pairs excluded
    keys = torch.cat([data[0][0], data[1][0]])
    key_labels = torch.cat([data[0][1], data[1][1]])
    for rank, offset in ((0, 0), (1, 5)):
        anchors, anchor_labels = data[rank][:2]
        same = anchor_labels[:, None] == key_labels[None, :]
        is_self = torch.zeros_like(same)
        is_self[torch.arange(len(anchors)), offset + torch.arange(len(anchors))] = True
        local = anchors.clone().requires_grad_()  # gradients through this rank's queries and keys
        rank_keys = torch.cat([local, data[1][0]] if rank == 0 else [data[0][0], local])
        expected = 0.1 / 0.07 * info_nce(local, rank_keys, same & ~is_self, ~same, 0.1)
        expected.backward()
        assert torch.allclose(results[rank]["pixel_loss"], expected, rtol=1e-5)
        assert torch.allclose(results[rank]["query_grad"], local.grad, atol=1e-6)
    # Contextrast anchors: means over the global batch, identical on both ranks
    means, present = class_anchors(torch.cat([data[0][2], data[1][2]]), torch.cat([data[0][3], data[1][3]]), 3)
    for result in results:
        assert torch.allclose(result["means"], means, atol=1e-6) and torch.equal(result["present"], present)
    # memory: both ranks hold what one process pushing [rank 0; rank 1] holds
    single = RegionContrast(in_channels=4, num_classes=3, memory_size=8, dim=4)
    single.memory.push(keys, key_labels)
    for result in results:
        for name in ("bank", "ptr", "filled"):
            assert torch.allclose(result["memory"][name].float(), getattr(single.memory, name).float(), atol=1e-6)
