"""CAM -> pseudo-label rules (rca.pseudo_labels) on tiny hand-made CAMs with known answers."""

import numpy as np
import pytest
import torch

from rca.crf import dense_crf
from rca.pseudo_labels import (argmax_labels, confident_labels, constant_background, make_pseudo_label,
                               power_background, probabilities_with_background, saliency_background)

from helpers import EDGE, blurred_edge, edge_image

# Two tagged classes with label values 3 and 7 on a 1 x 3 image.
CAMS = np.array([[[0.10, 0.50, 0.30]],
                 [[0.05, 0.20, 0.60]]], np.float32)
CLASSES = np.array([3, 7])


def test_probabilities_with_background_sum_to_one_and_keep_the_argmax():
    probs = probabilities_with_background(CAMS, 0.25)
    assert probs.shape == (3, 1, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-6)
    assert probs.argmax(axis=0).tolist() == [[0, 1, 2]]
    uniform = probabilities_with_background(np.zeros((2, 1, 1)), np.zeros((1, 1)))
    np.testing.assert_allclose(uniform[:, 0, 0], 1 / 3, rtol=1e-6)


def test_constant_background():
    assert constant_background(CAMS, CLASSES, threshold=0.25).tolist() == [[0, 3, 7]]
    assert constant_background(CAMS, CLASSES, threshold=0.55).tolist() == [[0, 0, 7]]
    assert constant_background(CAMS, CLASSES, threshold=0.7).tolist() == [[0, 0, 0]]
    # Torch input and no tagged class.
    assert constant_background(torch.from_numpy(CAMS), torch.tensor(CLASSES), 0.25).dtype == np.int64
    assert constant_background(np.zeros((0, 2, 2)), np.zeros(0, np.int64), 0.25).tolist() == [[0, 0], [0, 0]]


def test_power_background():
    # Background (1 - max)^alpha: maxima 0.1, 0.5, 0.6.
    # alpha 2: 0.81, 0.25, 0.16 -> background, class 3, class 7.
    assert power_background(CAMS, CLASSES, alpha=2).tolist() == [[0, 3, 7]]
    # alpha 0.5: 0.95, 0.71, 0.63 -> all background.
    assert power_background(CAMS, CLASSES, alpha=0.5).tolist() == [[0, 0, 0]]


def test_saliency_background_follows_the_released_rca_rule():
    cams = np.array([[[0.10, 0.95, 0.00], [0.20, 0.85, 0.00]],
                     [[0.00, 0.00, 0.95], [0.10, 0.00, 0.60]]], np.float32)
    saliency = np.array([[0.0, 0.95, 0.0], [0.5, 0.05, 0.9]], np.float32)
    labels = saliency_background(cams, np.array([1, 2]), saliency)
    # (0,0) clear background; (0,1) class 1; (0,2) background 1.0 and class 2 0.95 both > 0.9:
    # conflict; (1,0) background but salient; (1,1) background (0.95 > 0.85) but CAM > 0.8;
    # (1,2) class 2.
    assert labels.tolist() == [[0, 1, 255], [255, 255, 2]]
    # 2 of 6 pixels are foreground: under a 50% minimum the whole image is ignored.
    assert np.all(saliency_background(cams, np.array([1, 2]), saliency, min_foreground=0.5) == 255)
    with pytest.raises(ValueError, match="saliency"):
        saliency_background(cams, np.array([1, 2]), saliency.T)


def test_confident_labels_follow_irn():
    cams = np.array([[[0.02, 0.10, 0.40, 0.04]],
                     [[0.01, 0.03, 0.20, 0.35]]], np.float32)
    # fg threshold 0.30: [bg, bg, 3, 7]; bg threshold 0.05: [bg, 3, 3, 7].
    labels = confident_labels(cams, CLASSES, fg_threshold=0.30, bg_threshold=0.05)
    assert labels.tolist() == [[0, 255, 3, 7]]


def test_argmax_labels_without_background():
    assert argmax_labels(CAMS, np.array([0, 5])).tolist() == [[0, 0, 5]]
    assert np.all(argmax_labels(np.zeros((0, 2, 2)), np.zeros(0, np.int64)) == 255)


def test_rules_with_crf_move_a_blurred_boundary_to_the_colour_edge():
    image = edge_image()  # dark left, bright from column EDGE on
    cams = blurred_edge(14)[None]  # one tagged class (label 4), 50% at column 14 instead of 19.5
    truth = np.where(np.arange(40) >= EDGE, 4, 0)[None].repeat(40, axis=0)
    saliency = (truth > 0).astype(np.float32)  # a sharp saliency map; only the CAM is blurred
    for rule, params in [("constant", dict(threshold=0.5)), ("power", dict(alpha=1)),
                         ("confident", dict(fg_threshold=0.7, bg_threshold=0.3)),
                         ("saliency", dict(saliency=saliency))]:
        without_crf = make_pseudo_label(cams, np.array([4]), rule, **params)
        assert np.mean(without_crf == truth) < 0.98, rule  # boundary off the edge, or 255 around it
        crf = "irn" if rule == "confident" else "psa"
        labels = make_pseudo_label(cams, np.array([4]), rule, image=image, crf=crf, **params)
        np.testing.assert_array_equal(labels, truth, err_msg=rule)
    # Without a background class: two tagged classes (labels 2 and 5) split the image at column 14.
    two_classes = np.stack([1 - cams[0], cams[0]])
    truth = np.where(truth > 0, 5, 2)
    assert np.mean(make_pseudo_label(two_classes, np.array([2, 5]), "argmax") == truth) < 0.98
    labels = make_pseudo_label(two_classes, np.array([2, 5]), "argmax", image=image, crf="psa")
    np.testing.assert_array_equal(labels, truth)


def test_crf_over_the_tagged_classes_equals_the_crf_over_all_labels():
    """The rules run the dense CRF over background + the tagged classes only. Over all 21 VOC labels,
    the untagged ones at probability 0 (unary -log 1e-5 after the clip), it gives the same labels
    and marginals: the untagged labels never gain mass. (The restricted CRF is the cheaper one:
    scripts/benchmark.py times both.)"""
    image = edge_image()
    top = (np.arange(40) < 20)[:, None]
    cams = np.stack([blurred_edge(14) * top, blurred_edge(16) * ~top])  # label 5 above, label 12 below
    classes = np.array([5, 12])
    labels = constant_background(cams, classes, 0.5, image=image, crf="psa")
    assert set(np.unique(labels)) == {0, 5, 12}
    restricted = probabilities_with_background(cams, 0.5)
    full = np.zeros((21, 40, 40), np.float32)
    full[[0, 5, 12]] = restricted  # channel = label value
    marginals = dense_crf(image, full, preset="psa")
    np.testing.assert_array_equal(marginals.argmax(axis=0), labels)
    np.testing.assert_allclose(marginals[[0, 5, 12]], dense_crf(image, restricted, preset="psa"), atol=1e-5)
    assert np.delete(marginals, [0, 5, 12], axis=0).max() < 1e-5


def test_make_pseudo_label_dispatch_and_errors():
    np.testing.assert_array_equal(make_pseudo_label(CAMS, CLASSES, "constant", threshold=0.25),
                                  constant_background(CAMS, CLASSES, 0.25))
    with pytest.raises(ValueError, match="unknown pseudo-label rule"):
        make_pseudo_label(CAMS, CLASSES, "otsu")
    with pytest.raises(ValueError, match="alpha"):
        make_pseudo_label(CAMS, CLASSES, "constant", threshold=0.2, alpha=4)
    with pytest.raises(ValueError, match="classes"):
        constant_background(CAMS, np.array([3]), 0.2)
