"""Tests of rca.losses.region_contrast: region centres, InfoNCE against the memory, FIFO memory."""

import math

import pytest
import torch
import torch.nn.functional as F

from rca.losses import RegionContrast, region_centres, region_contrast_loss

T = 0.2


def test_region_centres_are_normalised_class_means_per_image():
    embeddings = torch.zeros(2, 3, 2, 2)
    embeddings[0, 0] = torch.tensor([[1.0, 3.0], [0.0, 0.0]])  # image 0, class 4 at the top row
    embeddings[0, 1, 1] = 2.0  # image 0, class 1 at the bottom row: (0, 2, 0)
    embeddings[1, 2] = 5.0  # image 1, class 4 everywhere but one ignored pixel
    labels = torch.tensor([[[4, 4], [1, 1]], [[4, 4], [4, 255]]])
    centres, centre_labels = region_centres(embeddings, labels)
    assert centre_labels.tolist() == [1, 4, 4]
    assert torch.allclose(centres, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    empty, empty_labels = region_centres(embeddings, torch.full_like(labels, 255))
    assert empty.shape == (0, 3) and empty_labels.shape == (0,)


def test_closed_forms_against_a_memory():
    # centres equal to their class's memory entries, orthogonal to 2 x 3 entries of other classes
    keys = F.one_hot(torch.arange(3).repeat_interleave(3), 4).float()
    key_labels = torch.arange(3).repeat_interleave(3)
    centres = F.one_hot(torch.tensor([0, 2]), 4).float()
    expected = math.log(1 + 6 * math.exp(-1 / T))
    assert region_contrast_loss(centres, torch.tensor([0, 2]), keys, key_labels, T).item() == pytest.approx(expected, rel=1e-5)
    # everything equal: each positive term is -log(1 / (1 + 6))
    same = torch.ones(9, 4)
    assert region_contrast_loss(torch.ones(2, 4), torch.tensor([0, 2]), same, key_labels, T).item() == pytest.approx(math.log(7), rel=1e-5)


def test_permuting_centres_changes_nothing():
    generator = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(12, 8, generator=generator), dim=1)
    labels = torch.randint(0, 3, (12,), generator=generator)
    keys = F.normalize(torch.randn(20, 8, generator=generator), dim=1)
    key_labels = torch.randint(0, 3, (20,), generator=generator)
    perm = torch.randperm(12, generator=generator)
    assert torch.allclose(region_contrast_loss(centres, labels, keys, key_labels),
                          region_contrast_loss(centres[perm], labels[perm], keys, key_labels), rtol=1e-5)


def test_module_empty_memory_single_class_then_fifo_wrap_around():
    torch.manual_seed(0)
    module = RegionContrast(in_channels=5, num_classes=3, memory_size=3, dim=4)
    features = torch.randn(2, 5, 4, 4, requires_grad=True)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)  # one class only
    loss = module(features, labels)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(features.grad).all()
    assert module.memory.filled.tolist() == [2, 0, 0] and module.memory.ptr.tolist() == [2, 0, 0]
    labels[0, 4:] = 1
    loss = module(features, labels)  # class 1 centre sees class 0 entries: still no positive
    assert module.memory.filled.tolist() == [3, 1, 0] and module.memory.ptr.tolist() == [1, 1, 0]
    loss = module(features, labels)
    loss.backward()
    assert loss.item() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.head.parameters())
    assert module.memory.ptr.tolist() == [0, 2, 0]  # class 0: 2 + 2 + 2 = 6 writes into 3 slots


def test_module_reads_the_memory_before_pushing_the_batch():
    torch.manual_seed(0)
    module = RegionContrast(in_channels=5, num_classes=2, memory_size=4, dim=4)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[:, 2:] = 1
    # empty memory: 0 (had the batch been pushed first, each centre would be its own positive)
    assert module(torch.randn(2, 5, 4, 4), labels).item() == 0
    assert module.memory.filled.tolist() == [2, 2]
