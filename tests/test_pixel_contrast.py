"""Tests of rca.losses.pixel_contrast: Eq. 3 closed forms, hard anchor sampler, memory variant."""

import math

import pytest
import torch
import torch.nn.functional as F

from rca.losses import PixelContrast, hard_anchor_sampling, memory_contrast_loss, pixel_contrast_loss

T, TB = 0.1, 0.07


def separated(classes, per_class, dim=8):
    """``per_class`` identical one-hot rows per class, orthogonal between classes."""
    labels = torch.arange(classes).repeat_interleave(per_class)
    return F.one_hot(labels, dim).float(), labels


def test_perfect_separation_closed_form():
    embeddings, labels = separated(3, 4)
    negatives = 8  # every anchor: 3 positives at dot 1, 8 negatives at dot 0
    expected = T / TB * math.log(1 + negatives * math.exp(-1 / T))
    assert pixel_contrast_loss(embeddings, labels, T, TB).item() == pytest.approx(expected, rel=1e-5)


def test_all_embeddings_equal_gives_log_of_set_size():
    embeddings = F.normalize(torch.ones(10, 4), dim=1)
    labels = torch.tensor([0] * 4 + [1] * 6)
    # class-0 anchors: 6 negatives; class-1 anchors: 4 negatives; each term -log(1 / (1 + n))
    expected = T / TB * (4 * math.log(7) + 6 * math.log(5)) / 10
    assert pixel_contrast_loss(embeddings, labels, T, TB).item() == pytest.approx(expected, rel=1e-5)


def test_anchor_permutation_invariance_and_positive_value():
    generator = torch.Generator().manual_seed(0)
    embeddings = F.normalize(torch.randn(30, 16, generator=generator), dim=1)
    labels = torch.randint(0, 4, (30,), generator=generator)
    perm = torch.randperm(30, generator=generator)
    loss = pixel_contrast_loss(embeddings, labels)
    assert loss > 0
    assert torch.allclose(loss, pixel_contrast_loss(embeddings[perm], labels[perm]), rtol=1e-5)


def test_single_class_and_lonely_anchor_give_no_nan():
    embeddings = F.normalize(torch.randn(5, 4), dim=1).requires_grad_()
    loss = pixel_contrast_loss(embeddings, torch.zeros(5, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(embeddings.grad).all()
    # an anchor alone in its class has no positive: it is skipped, the others still count
    embeddings, labels = separated(2, 3)
    with_lonely = torch.cat([embeddings, F.one_hot(torch.tensor([5]), 8).float()])
    loss = pixel_contrast_loss(with_lonely, torch.cat([labels, torch.tensor([2])]), T, TB)
    assert loss.item() == pytest.approx(T / TB * math.log(1 + 4 * math.exp(-1 / T)), rel=1e-5)


def coordinate_embeddings(batch, h, w):
    """Embeddings whose channels are (image, row, column): a sampled row names its pixel."""
    b, y, x = torch.meshgrid(torch.arange(batch), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([b, y, x], dim=1).float()


def test_hard_anchor_sampler_counts_and_split():
    h = w = 20
    labels = torch.zeros(2, h, w, dtype=torch.long)
    labels[0, 12:] = 3  # image 0: class 0 (240 px), class 3 (160 px)
    labels[1, :5] = 255  # image 1: class 0 (300 px) + ignore
    labels[1, 5, :4] = 7  # class 7: 4 px, not more than max_views -> not a pair
    predictions = labels.clone()
    predictions[0, 0, :2] = 1  # image 0 class 0: 2 hard pixels
    predictions[0, 12:] = 0  # image 0 class 3: all hard
    predictions[1, 5:10] = 2  # image 1 class 0: 96 hard (20 px of class 7 row excluded)
    embeddings = coordinate_embeddings(2, h, w)
    generator = torch.Generator().manual_seed(0)
    anchors, anchor_labels = hard_anchor_sampling(embeddings, labels, predictions, max_samples=40, max_views=10,
                                                  generator=generator)
    # 3 pairs -> n_view = min(40 // 3, 10) = 10 anchors each
    assert anchors.shape == (30, 3) and anchor_labels.tolist() == [0] * 10 + [3] * 10 + [0] * 10
    b, y, x = anchors.long().unbind(1)
    assert len(set(zip(b.tolist(), y.tolist(), x.tolist()))) == 30  # no pixel drawn twice
    assert torch.equal(labels[b, y, x], anchor_labels)
    hard = predictions[b, y, x] != anchor_labels
    assert hard[:10].sum() == 2  # only 2 hard pixels: all taken, easy fills the rest
    assert hard[10:20].sum() == 10  # no easy pixel: hard fills
    assert hard[20:].sum() == 5  # both plentiful: half and half


def test_hard_anchor_sampler_without_pairs_is_empty():
    anchors, labels = hard_anchor_sampling(torch.randn(1, 4, 5, 5), torch.full((1, 5, 5), 255),
                                           torch.zeros(1, 5, 5, dtype=torch.long))
    assert anchors.shape == (0, 4) and labels.shape == (0,)


def test_memory_contrast_closed_form_and_empty_memory():
    anchors, labels = separated(2, 2)
    keys, key_labels = separated(3, 5)  # memory: 5 entries of each of 3 classes
    expected = T / TB * math.log(1 + 10 * math.exp(-1 / T))
    assert memory_contrast_loss(anchors, labels, keys, key_labels).item() == pytest.approx(expected, rel=1e-5)
    empty = memory_contrast_loss(anchors.requires_grad_(), labels, torch.zeros(0, 8), torch.zeros(0, dtype=torch.long))
    empty.backward()
    assert empty.item() == 0 and torch.isfinite(anchors.grad).all()


def test_memory_enqueue_counts_mean_and_pointer_wrap_around():
    module = PixelContrast(in_channels=4, num_classes=3, dim=4, memory_size=12, pixels_per_image=10)
    labels = torch.zeros(2, 6, 6, dtype=torch.long)
    labels[0, :, :3] = 2  # image 0: classes 0 and 2 (18 px each); image 1: class 0 (36 px)
    labels[1, 0, 0] = 255
    embeddings = F.normalize(torch.randn(2, 4, 6, 6), dim=1)
    module.enqueue(embeddings, labels)
    assert module.pixel_memory.filled.tolist() == [12, 0, 10] and module.pixel_memory.ptr.tolist() == [8, 0, 10]
    assert module.segment_memory.filled.tolist() == [2, 0, 1]
    class2 = embeddings[0].permute(1, 2, 0)[labels[0] == 2]
    assert torch.allclose(module.segment_memory.bank[2, 0], F.normalize(class2.mean(0), dim=0), atol=1e-6)
    module.enqueue(embeddings, labels)  # class 2 ring: slots 10, 11, 0, ... 7 -> pointer 8
    assert module.pixel_memory.ptr.tolist() == [4, 0, 8] and module.pixel_memory.filled.tolist() == [12, 0, 12]
    assert module.segment_memory.ptr.tolist() == [4, 0, 2]


def test_memory_variant_forward_reads_memory_before_the_batch():
    torch.manual_seed(0)
    module = PixelContrast(in_channels=6, num_classes=2, dim=4, max_views=5, memory_size=50)
    features = torch.randn(2, 6, 8, 8, requires_grad=True)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 4:] = 1
    first = module(features, labels, labels)
    assert first.item() == 0  # empty memory: nothing to contrast with, no NaN
    assert module.pixel_memory.filled.tolist() == [20, 20]
    second = module(features, labels, labels)
    assert second.item() > 0
    second.backward()
    assert features.grad.abs().sum() > 0
    assert all(p.grad is not None for p in module.head.parameters())
    assert not module.pixel_memory.bank.requires_grad


def test_in_batch_forward_gradients_reach_features_and_head():
    torch.manual_seed(0)
    module = PixelContrast(in_channels=6, num_classes=3, dim=4, max_views=5)
    features = torch.randn(2, 6, 8, 8, requires_grad=True)
    labels = torch.randint(0, 3, (2, 8, 8))
    loss = module(features, labels, torch.zeros_like(labels))
    loss.backward()
    assert loss.item() > 0 and features.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.head.parameters())
