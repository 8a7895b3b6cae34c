"""Tests of the RCA classifier (rca.models.classifier) and its k-means (rca.kmeans)."""

import math

import pytest
import torch
import torch.nn.functional as F

from rca.classify import region_contrast_loss
from rca.config import ClsConfig
from rca.kmeans import kmeans
from rca.losses import semantic_contrast_loss
from rca.models.classifier import (build_classifier, rca_classification_loss,
                                   region_masks)

K, D = 4, 16


def small_model(**kwargs):
    torch.manual_seed(0)
    options = dict(backbone="resnet18", embed_dim=D, memory_size=8, num_centres=2)
    options.update(kwargs)
    return build_classifier(K, **options)


def fill_memory(model, per_class=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(K).repeat_interleave(per_class)
    model.memory.push(torch.randn(len(labels), D, generator=generator), labels)


# --- k-means ---------------------------------------------------------------------------------

def test_kmeans_recovers_well_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    directions = torch.eye(8)[:3]
    truth = torch.arange(3).repeat_interleave(40)[torch.randperm(120, generator=generator)]
    x = directions[truth] + 0.05 * torch.randn(120, 8, generator=generator)
    centres, assign = kmeans(x, 3, generator=torch.Generator().manual_seed(1))
    assert centres.shape == (3, 8)
    assert torch.allclose(centres.norm(dim=1), torch.ones(3), atol=1e-5)
    # a one-to-one match between found and true clusters, centres next to the true directions
    mapping = {int(a): int(t) for a, t in zip(assign, truth)}
    assert len(set(mapping.values())) == 3
    assert all(mapping[int(a)] == int(t) for a, t in zip(assign, truth))
    for found, true in mapping.items():
        assert float(centres[found] @ directions[true]) > 0.99


def test_kmeans_deterministic_and_small_n():
    x = torch.randn(50, 5, generator=torch.Generator().manual_seed(2))
    a = kmeans(x, 4, generator=torch.Generator().manual_seed(7))
    b = kmeans(x, 4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    centres, assign = kmeans(x[:3] * 4.0, 10)
    assert torch.allclose(centres, F.normalize(x[:3], dim=1)) and assign.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="k >= 1"):
        kmeans(x, 0)


# --- model -----------------------------------------------------------------------------------

def test_forward_shapes_rca_and_cam():
    images, tags = torch.randn(2, 3, 64, 64), torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]])
    model = small_model()
    out = model(images, tags)
    assert out["scores"].shape == out["scores_coarse"].shape == (2, K)
    assert out["cams"].shape == (2, K, 4, 4)
    assert torch.allclose(out["scores"], out["cams"].mean((2, 3)))
    assert out["region_embeddings"].shape == (3, D)
    assert torch.allclose(out["region_embeddings"].norm(dim=1), torch.ones(3), atol=1e-5)
    assert out["region_labels"].tolist() == [0, 2, 3]
    assert out["region_images"].tolist() == [0, 0, 1]
    assert "region_embeddings" not in model(images)

    cam = small_model(method="cam")
    out = cam(images, tags)
    assert out["scores"].shape == (2, K) and out["scores_coarse"] is None
    assert out["cams"].shape == (2, K, 4, 4) and "region_embeddings" not in out
    assert cam.memory is None and not hasattr(cam, "embed_head")
    with pytest.raises(RuntimeError, match="method='rca'"):
        cam.update_centres()


def test_parameter_split_and_state_dict():
    model = small_model()
    backbone = {id(p) for p in model.backbone.parameters()}
    heads = [n for n, p in model.named_parameters() if id(p) not in backbone]
    assert heads and all(not n.startswith(("backbone", "memory")) for n in heads)
    assert list(model.memory.parameters()) == []
    state = model.state_dict()
    assert {"memory.bank", "memory.ptr", "memory.filled", "centres",
            "centre_valid"} <= set(state)


def test_region_mask_rule_on_hand_made_cam():
    # class 0 map over 4 pixels with class 1 fixed at 0: softmax_0 = sigmoid(cam_0)
    cams = torch.zeros(1, 2, 2, 2)
    cams[0, 0] = torch.tensor([[2.0, -1.0], [0.5, -3.0]])
    masks = region_masks(cams, torch.tensor([0, 0]), torch.tensor([0, 1]))
    probs0 = torch.sigmoid(cams[0, 0])  # 0.881, 0.269, 0.622, 0.047; mean 0.455
    assert masks[0].tolist() == [[True, False], [True, False]]
    assert torch.equal(masks[0], probs0 > probs0.mean())
    assert masks[1].tolist() == [[False, True], [False, True]]  # class 1 = 1 - class 0
    flat = region_masks(torch.zeros(1, 2, 3, 3), torch.tensor([0]), torch.tensor([1]))
    assert flat.all()  # a constant map has no pixel above its mean: the whole image


def test_region_embeddings_are_masked_averages():
    model = small_model()
    cams = torch.zeros(1, K, 1, 3)
    cams[0, 1] = torch.tensor([[4.0, 4.0, -4.0]])  # class 1 region: first two pixels
    features = torch.zeros(1, D, 1, 3, requires_grad=True)
    with torch.no_grad():
        features[0, 0] = torch.tensor([[1.0, 3.0, 100.0]])
        features[0, 1] = torch.tensor([[2.0, 2.0, -100.0]])
    tags = torch.tensor([[0, 1, 0, 0]])
    emb, labels, images = model.region_embeddings(features, cams, tags)
    expected = F.normalize(torch.tensor([[2.0, 2.0] + [0.0] * (D - 2)]), dim=1)
    assert torch.allclose(emb, expected) and labels.tolist() == [1] and images.tolist() == [0]
    emb[0, 0].backward()
    assert features.grad[0, :, 0, 2].abs().sum() == 0 and features.grad[0, 0, 0, 0] != 0
    with pytest.raises(ValueError, match="tags"):
        model.region_embeddings(features, cams, torch.tensor([[0, 1]]))


def test_update_centres_then_forward_uses_context():
    model = small_model().eval()
    images = torch.randn(1, 3, 64, 64)
    features = model.embed_head(model.backbone(images))
    context, attention = model.aggregate(features)
    assert attention is None and context.abs().sum() == 0
    cams_before = model(images)["cams"]

    fill_memory(model, per_class=6)
    model.memory.push(torch.randn(1, D), torch.tensor([0]))  # class 0: 7 entries, others 6
    model.update_centres()
    assert model.centre_valid.sum() == K * 2
    assert torch.allclose(model.centres.norm(dim=1), torch.ones(K * 2), atol=1e-5)
    assert model.centre_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    centres = model.centres.clone()
    model.update_centres()
    assert torch.equal(model.centres, centres)  # deterministic given the memory

    context, attention = model.aggregate(features)
    assert context.abs().sum() > 0 and attention.shape == (1, 16, K * 2)
    assert torch.allclose(attention.sum(2), torch.ones(1, 16), atol=1e-5)
    assert not torch.allclose(model(images)["cams"], cams_before)


def test_update_centres_with_partial_memory():
    model = small_model()
    model.memory.push(torch.randn(3, D), torch.tensor([2, 2, 2]))  # 3 entries, 2 centres
    model.memory.push(torch.randn(1, D), torch.tensor([0]))  # 1 entry, fewer than 2 centres
    model.update_centres()
    assert model.centre_valid.tolist() == [True, False, False, False, True, True, False, False]
    keys, labels = model.memory.keys()
    assert torch.allclose(model.centres[0], keys[labels == 0][0])


def test_unnormalised_aggregation_is_the_released_expression():
    model = small_model(aggregation="unnormalised")
    fill_memory(model)
    model.update_centres()
    features = torch.randn(2, D, 3, 3)
    context, attention = model.aggregate(features)
    queries = F.normalize(features.flatten(2).transpose(1, 2), dim=2)
    expected = queries @ model.centres.t() / model.num_centres * K
    assert torch.allclose(attention, expected, atol=1e-6)
    assert torch.allclose(context.flatten(2).transpose(1, 2), expected @ model.centres, atol=1e-5)


def test_memory_candidates_threshold():
    model = small_model()
    outputs = {
        "scores": torch.tensor([[3.0, 0.0, -2.0, 1.0], [0.5, 2.0, 0.0, 0.0]]),
        "region_embeddings": torch.randn(4, D, requires_grad=True),
        "region_labels": torch.tensor([0, 3, 0, 1]),
        "region_images": torch.tensor([0, 0, 1, 1]),
    }
    # sigmoid: 0.953, 0.731, 0.622, 0.881 -> keep regions 0, 1 and 3 at 0.7
    emb, labels = model.memory_candidates(outputs, threshold=0.7)
    assert labels.tolist() == [0, 3, 1] and not emb.requires_grad
    assert torch.equal(emb, outputs["region_embeddings"][[0, 1, 3]].detach())
    with pytest.raises(KeyError, match="region_embeddings"):
        model.memory_candidates({"scores": outputs["scores"]})


def test_classification_loss_by_hand():
    log3, log9 = math.log(3), math.log(9)
    # sigmoid(log 3) = 3/4, sigmoid(-log 3) = 1/4, sigmoid(0) = 1/2, sigmoid(log 9) = 9/10.
    fine = torch.tensor([[log3, -log3, 0.0, log3], [0.0, log3, -log3, -log3]])
    coarse = torch.tensor([[log9, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    tags = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]])
    # -[y log s + (1 - y) log(1 - s)] per (image, class), averaged over the 2 x 4 entries.
    # fine, image 1: -log 3/4, -log 3/4, -log 1/2, -log 1/4; image 2: -log 1/2, -log 1/4, -log 3/4, -log 1/4.
    fine_loss = (3 * math.log(4 / 3) + 2 * math.log(2) + 3 * math.log(4)) / 8
    # coarse: -log 9/10 for (image 1, class 1), -log 1/2 for the other 7 entries.
    coarse_loss = (math.log(10 / 9) + 7 * math.log(2)) / 8
    rca = rca_classification_loss({"scores": fine, "scores_coarse": coarse}, tags, 0.4)
    assert rca.item() == pytest.approx(fine_loss + 0.4 * coarse_loss, rel=1e-6)
    cam = rca_classification_loss({"scores": fine, "scores_coarse": None}, tags)
    assert cam.item() == pytest.approx(fine_loss, rel=1e-6)


class OptimiserBuilt(Exception):
    """Raised by a patched SGD to stop ``stages/train_cls.py`` once its optimiser exists."""


def test_train_cls_gives_every_head_parameter_head_lr_mult(tmp_path, monkeypatch):
    # The parameter groups are built inside train_cls.main: run it until the optimiser exists.
    from rca.config import CONFIG_DIR
    from stages import train_cls

    built = {}

    def build_and_keep(*args, **kwargs):
        built["model"] = build_classifier(*args, **kwargs)
        return built["model"]

    class RecordingSGD(torch.optim.SGD):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built["optimiser"] = self
            raise OptimiserBuilt

    monkeypatch.setattr(train_cls, "build_classifier", build_and_keep)
    monkeypatch.setattr(torch.optim, "SGD", RecordingSGD)
    with pytest.raises(OptimiserBuilt):
        train_cls.main(["--config", str(CONFIG_DIR / "demo.yaml"), "--work-dir", str(tmp_path), "--device", "cpu",
                        "--set", "cls.lr=0.02", "--set", "cls.head_lr_mult=7"])
    model, groups = built["model"], built["optimiser"].param_groups
    backbone = {id(p) for p in model.backbone.parameters()}
    heads = {id(p) for p in model.parameters()} - backbone
    assert heads and backbone
    assert [{id(p) for p in group["params"]} for group in groups] == [backbone, heads]
    assert [group["lr"] for group in groups] == pytest.approx([0.02, 0.02 * 7])


def test_one_optimisation_step_lowers_the_loss():
    model = small_model()
    fill_memory(model)
    model.update_centres()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    tags = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0]])
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3)

    def total_loss():
        out = model(images, tags)
        contrast = semantic_contrast_loss(out["region_embeddings"], out["region_labels"],
                                          *model.memory.keys())
        return rca_classification_loss(out, tags) + 0.1 * contrast

    before = total_loss()
    optimiser.zero_grad()
    before.backward()
    assert model.embed_head[0].weight.grad.abs().sum() > 0
    assert model.fine_head.weight.grad.abs().sum() > 0
    optimiser.step()
    with torch.no_grad():
        after = total_loss()
    assert after.item() < before.item()


def test_fine_scores_learn_as_fast_as_the_coarse_scores_from_initialisation():
    """One SGD step on the heads moves the fine scores as much as the coarse ones.

    Both heads start at N(0, 0.01) on the same features with the same loss, so with no centres (zero
    context) their first steps match. A fine head learned as two 1x1 factors (fuse, then classifier)
    moved its scores 10 times less here (ratio 0.095 against 1.31), which is why it is one convolution.
    """
    model = small_model()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    tags = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0]])

    out = model(images, tags)
    fine, coarse = out["scores"].detach(), out["scores_coarse"].detach()
    model.zero_grad()
    rca_classification_loss(out, tags, coarse_weight=1.0).backward()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.startswith("backbone") and parameter.grad is not None:
                parameter -= 0.1 * parameter.grad
        out = model(images, tags)
        new_fine, new_coarse = out["scores"], out["scores_coarse"]
    moved_fine, moved_coarse = (new_fine - fine).abs().mean(), (new_coarse - coarse).abs().mean()
    assert moved_coarse > 1e-3
    assert 0.5 < moved_fine / moved_coarse < 2.0


def test_steady_state_memory_gives_contrast_and_aggregation():
    """fill_random + update_centres: the benchmark's steady state runs every part of RCA."""
    model = small_model()
    model.memory.fill_random(torch.Generator().manual_seed(0))
    model.update_centres()
    assert len(model.memory) == K * 8 and bool(model.centre_valid.all())
    images, tags = torch.randn(2, 3, 64, 64), torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]])
    out = model(images, tags)
    assert out["attention"].shape == (2, 16, K * 2)
    features = model.embed_head(model.backbone(images))
    assert model.aggregate(features)[0].abs().sum() > 0  # a non-zero context reaches the fine CAMs
    loss = region_contrast_loss(out, model.memory, ClsConfig())
    assert loss > 0
    loss.backward()
    assert model.embed_head[0].weight.grad.abs().sum() > 0
