"""Tests of rca.losses.contextrast: anchors, anchor update, BANE sampling, pixel-anchor loss."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from rca.losses import (Contextrast, bane_sampling, boundary_negatives, class_anchors, pixel_anchor_loss,
                        update_anchors)

T = 0.1


def reference_negatives(errors, fraction):
    """BANE with SciPy's exact Euclidean distance transform and a plain sort."""
    distance = distance_transform_edt(errors)
    inside = np.sort(distance[errors])
    threshold = inside[int(np.ceil(fraction * inside.size)) - 1]
    return errors & (distance <= threshold), distance


def test_bane_on_an_error_blob_picks_its_boundary_not_its_centre():
    errors = np.zeros((41, 41), dtype=bool)
    errors[10:31, 10:31] = True  # a 21 x 21 error blob: distances 1 (rim) ... 11 (centre)
    chosen = boundary_negatives(errors, 0.5)
    expected, distance = reference_negatives(errors, 0.5)
    assert np.array_equal(chosen, expected)
    assert not (chosen & ~errors).any()
    assert chosen[errors & (distance == 1)].all()  # the whole rim
    assert distance[chosen].max() <= 4  # within a small distance of the boundary
    assert not chosen[20, 20] and not chosen[errors & (distance > 4)].any()  # nothing from the centre
    assert chosen.sum() >= 0.5 * errors.sum()


@pytest.mark.parametrize("seed", range(5))
def test_bane_matches_scipy_on_random_error_maps(seed):
    rng = np.random.default_rng(seed)
    errors = rng.random((30, 37)) < 0.55  # ragged regions, some touching the image border
    for fraction in (0.1, 0.5, 1.0):
        assert np.array_equal(boundary_negatives(errors, fraction), reference_negatives(errors, fraction)[0])
    assert not boundary_negatives(np.zeros((4, 4), dtype=bool)).any()


def test_bane_uses_exact_euclidean_distances():
    # a disk and an ellipse: many distinct distances, where approximate (3x3/5x5 mask) transforms
    # order and tie pixels differently from the exact one
    y, x = np.mgrid[:64, :64]
    errors = ((y - 20) ** 2 + (x - 20) ** 2 < 15**2) | (((y - 45) / 12.0) ** 2 + ((x - 44) / 18.0) ** 2 < 1)
    for fraction in np.linspace(0.05, 1.0, 20):
        assert np.array_equal(boundary_negatives(errors, fraction), reference_negatives(errors, fraction)[0])


def test_bane_sampling_selects_per_class_error_boundaries():
    labels = torch.zeros(1, 12, 12, dtype=torch.long)
    labels[0, :, 6:] = 1
    predictions = labels.clone()
    predictions[0, 2:10, 1:6] = 1  # class 0 pixels predicted as 1: an 8 x 5 error blob
    negatives = bane_sampling(labels, predictions, num_classes=2)
    errors = (labels != predictions)[0].numpy()
    assert np.array_equal(negatives[0].numpy(), reference_negatives(errors, 0.5)[0])
    assert (labels[negatives] == 0).all()  # negatives of class 0 for the class-1 anchor
    assert not bane_sampling(labels, labels, 2).any()  # no error, no negative
    ignored = torch.full_like(labels, 255)
    assert not bane_sampling(ignored, predictions, 2).any()


def test_class_anchors_are_means_under_the_labels():
    embeddings = torch.arange(2 * 2 * 2 * 2, dtype=torch.float).view(2, 2, 2, 2)
    labels = torch.tensor([[[0, 0], [2, 255]], [[2, 2], [2, 2]]])
    anchors, present = class_anchors(embeddings, labels, num_classes=4)
    assert present.tolist() == [True, False, True, False]
    pixels = embeddings.permute(0, 2, 3, 1).reshape(-1, 2)
    assert torch.allclose(anchors[0], pixels[[0, 1]].mean(0))
    assert torch.allclose(anchors[2], pixels[[2, 4, 5, 6, 7]].mean(0))
    assert anchors[1].abs().sum() == 0


def test_update_anchors_mixes_only_classes_present_in_both():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
    top = torch.tensor([[0.0, 1.0], [5.0, 5.0], [2.0, 0.0]])
    present, top_present = torch.tensor([True, True, False]), torch.tensor([True, False, True])
    updated = update_anchors(anchors, present, top, top_present, (0.25, 0.75))
    r = 1 / math.sqrt(0.25**2 + 0.75**2)
    assert torch.allclose(updated[0], torch.tensor([0.25 * r, 0.75 * r]))  # w_l A_i + w_h A_top, normalised
    assert torch.allclose(updated[1], torch.tensor([0.0, 1.0]))  # absent at the top: kept
    assert updated[2].abs().sum() == 0  # absent at this stage


def test_pixel_anchor_loss_closed_forms():
    anchors = F.one_hot(torch.arange(3), 4).float()
    present = torch.tensor([True, True, False])
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    pixels = F.one_hot(labels, 4).float()
    negatives = torch.tensor([False, True, True, False, True, True, False, False])
    # anchor 0: 3 positives, negatives = pixels 4, 5 (other classes only); anchor 1: 2 positives,
    # negatives 1, 2, 5; anchor 2 absent; all negatives orthogonal
    expected = (math.log(1 + 2 * math.exp(-1 / T)) + math.log(1 + 3 * math.exp(-1 / T))) / 2
    assert pixel_anchor_loss(anchors, present, pixels, labels, negatives, T).item() == pytest.approx(expected, rel=1e-5)
    equal = torch.ones(8, 4) / 2
    expected = (math.log(1 + 2) + math.log(1 + 3)) / 2
    assert pixel_anchor_loss(equal[:3], present, equal, labels, negatives, T).item() == pytest.approx(expected, rel=1e-5)


def test_pixel_anchor_loss_invariant_to_permuting_anchors():
    generator = torch.Generator().manual_seed(0)
    anchors = F.normalize(torch.randn(4, 6, generator=generator), dim=1)
    pixels = F.normalize(torch.randn(40, 6, generator=generator), dim=1)
    labels = torch.randint(0, 4, (40,), generator=generator)
    negatives = torch.rand(40, generator=generator) < 0.5
    present = torch.tensor([True, True, False, True])
    perm = torch.tensor([2, 0, 3, 1])  # class c becomes class perm^-1 ...: relabel consistently
    inverse = torch.argsort(perm)
    loss = pixel_anchor_loss(anchors, present, pixels, labels, negatives)
    permuted = pixel_anchor_loss(anchors[perm], present[perm], pixels, inverse[labels], negatives)
    assert loss > 0 and torch.allclose(loss, permuted, rtol=1e-5)


def stages_and_labels(seed=0, batch=2):
    generator = torch.Generator().manual_seed(seed)
    channels, sizes = (4, 6, 8, 8), (16, 8, 4, 4)
    stages = [torch.randn(batch, c, s, s, generator=generator, requires_grad=True) for c, s in zip(channels, sizes)]
    labels = torch.zeros(batch, 32, 32, dtype=torch.long)
    labels[:, 16:] = 1
    labels[:, :, :8] = 2
    predictions = labels.clone()
    predictions[:, 12:20] = 2
    return channels, stages, labels, predictions


def test_contextrast_gradients_reach_every_head_and_stage():
    channels, stages, labels, predictions = stages_and_labels()
    module = Contextrast(channels, num_classes=3, dim=5)
    loss = module(stages, labels, predictions)
    loss.backward()
    assert loss.item() > 0
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in stages)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())


def test_contextrast_is_the_weighted_sum_of_stage_losses():
    channels, stages, labels, predictions = stages_and_labels()
    torch.manual_seed(0)
    full = Contextrast(channels, 3, dim=5, layer_weights=(0.1, 0.3, 0.7, 1.0)).eval()
    per_stage = []
    for i in range(4):
        weights = [0.0] * 4
        weights[i] = 1.0
        torch.manual_seed(0)
        one = Contextrast(channels, 3, dim=5, layer_weights=weights).eval()
        per_stage.append(one(stages, labels, predictions))
    expected = sum(w * x for w, x in zip((0.1, 0.3, 0.7, 1.0), per_stage))
    assert torch.allclose(full(stages, labels, predictions), expected, rtol=1e-5)


def test_contextrast_single_class_or_no_error_gives_zero_without_nan():
    channels, stages, labels, predictions = stages_and_labels()
    module = Contextrast(channels, 3, dim=5)
    for lab, pred in ((torch.zeros_like(labels), torch.zeros_like(labels)), (labels, labels)):
        loss = module(stages, lab, pred)
        loss.backward()
        assert loss.item() == 0
        assert all(torch.isfinite(s.grad).all() for s in stages)
        assert all(p.grad is not None for p in module.parameters())


def test_contextrast_rejects_bad_weights():
    with pytest.raises(ValueError, match="layer_weights"):
        Contextrast((4, 4, 4, 4), 3, layer_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="anchor_weights"):
        Contextrast((4, 4, 4, 4), 3, anchor_weights=(0.7, 0.7))
