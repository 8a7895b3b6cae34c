"""DeepLab-v2 training loss (rca.segment.segmentation_loss) against hand-computed cross-entropies."""

import math

import pytest
import torch

from rca.segment import segmentation_loss


def logits_from_probs(probs) -> torch.Tensor:
    """``(C, h, w)`` probabilities -> ``(1, C, h, w)`` logits whose softmax gives them back."""
    return torch.tensor(probs, dtype=torch.float64).log()[None]


def constant_logits(probs, size) -> torch.Tensor:
    """``(1, C, *size)`` logits with softmax ``probs`` at every position (bilinear resizing keeps them)."""
    return logits_from_probs(probs)[..., None, None].expand(-1, -1, *size).contiguous()


def test_cross_entropy_by_hand_ignores_255():
    # Per-pixel class probabilities (3 classes, a 2 x 2 image) and the labels.
    probs = [[[0.50, 0.10], [0.25, 0.125]],
             [[0.25, 0.10], [0.25, 0.750]],
             [[0.25, 0.80], [0.50, 0.125]]]
    masks = torch.tensor([[[0, 255], [2, 1]]])
    loss = segmentation_loss({"logits": logits_from_probs(probs)}, masks)
    # -log p(label) over the 3 labelled pixels: log 2, log 2, log 4/3. The 255 pixel, where class 0 has
    # probability 0.1, is not scored (counting it as class 0 would add log 10).
    assert loss.item() == pytest.approx((2 * math.log(2) + math.log(4 / 3)) / 3, rel=1e-9)


def test_logits_are_upsampled_to_the_mask_and_averaged_over_the_batch():
    logits = torch.cat([constant_logits([0.5, 0.5], (2, 2)), constant_logits([0.2, 0.8], (2, 2))])
    masks = torch.tensor([[[0, 1, 1], [255, 0, 1], [0, 0, 255]],
                          [[1, 1, 1], [1, 1, 1], [0, 255, 255]]])
    loss = segmentation_loss({"logits": logits}, masks)
    # Image 1: 7 labelled pixels, each log 2; image 2: 6 pixels of class 1 (-log 0.8) and 1 of class 0
    # (-log 0.2). One mean over all 14 labelled pixels of the batch.
    expected = (7 * math.log(2) + 6 * math.log(1.25) + math.log(5)) / 14
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_multi_scale_loss_is_the_sum_of_the_four_cross_entropies():
    masks = torch.tensor([[[0, 0, 1, 1],
                           [0, 0, 1, 1],
                           [1, 1, 1, 255],
                           [255, 1, 1, 1]]])  # 4 pixels of class 0, 10 of class 1, 2 ignored
    outputs = {
        "logits": constant_logits([0.5, 0.5], (4, 4)),  # max fusion
        "logits_scales": [constant_logits([0.8, 0.2], (4, 4)),  # scale 1
                          constant_logits([0.2, 0.8], (3, 3)),  # scale 0.75
                          constant_logits([0.4, 0.6], (2, 2))],  # scale 0.5
    }
    loss = segmentation_loss(outputs, masks)

    def cross_entropy(p0: float) -> float:  # mean -log p(label) over the 14 labelled pixels
        return -(4 * math.log(p0) + 10 * math.log(1 - p0)) / 14

    fused = cross_entropy(0.5)
    scales = [cross_entropy(0.8), cross_entropy(0.2), cross_entropy(0.4)]
    assert loss.item() == pytest.approx(fused + sum(scales), rel=1e-9)
    assert segmentation_loss({"logits": outputs["logits"]}, masks).item() == pytest.approx(fused, rel=1e-9)
