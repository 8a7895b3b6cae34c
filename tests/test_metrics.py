"""Confusion-matrix mIoU, pseudo-label scoring and mAP (rca.metrics) against hand-computed values."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from rca.io import load_label_png
from rca.metrics import ConfusionMatrix, PseudoLabelMetrics, average_precision, format_iou_table

# 4 classes; class 3 occurs in neither. Pixel 5 has an ignored target; pixel 6 an unlabelled (255)
# prediction.
TARGET = np.array([0, 0, 1, 1, 2, 255, 0, 1])
PRED = np.array([0, 1, 1, 1, 0, 2, 255, 0])


def test_hand_computed_miou_with_ignore_and_an_absent_class():
    matrix = ConfusionMatrix(4, class_names=["bg", "cat", "dog", "cow"])
    matrix.update(PRED, TARGET)
    result = matrix.compute()
    # class 0: TP 1, GT 3, predicted 3 -> 1 / 5; class 1: TP 2, GT 3, predicted 3 -> 2 / 4;
    # class 2: TP 0, GT 1, predicted 0 -> 0; class 3: absent -> NaN, left out of the mean.
    np.testing.assert_allclose(result["iou"][:3], [20.0, 50.0, 0.0])
    assert math.isnan(result["iou"][3]) and math.isnan(result["iou_by_name"]["cow"])
    assert result["miou"] == pytest.approx(70 / 3)
    assert result["pixel_accuracy"] == pytest.approx(100 * 3 / 7)
    assert result["mean_accuracy"] == pytest.approx(100 / 3)
    assert result["num_pixels"] == 7


def test_dropping_unlabelled_predictions_is_the_lenient_score():
    matrix = ConfusionMatrix(4)
    matrix.update(PRED, TARGET, drop_pred_ignore=True)
    # Pixel 6 dropped: class 0 has TP 1, GT 2, predicted 3 -> 1 / 4.
    np.testing.assert_allclose(matrix.compute()["iou"][:3], [25.0, 50.0, 0.0])


def test_torch_numpy_and_batched_updates_agree():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, (3, 16, 16))
    target[rng.random(target.shape) < 0.1] = 255
    pred = rng.integers(0, 5, (3, 16, 16))
    whole, parts = ConfusionMatrix(5), ConfusionMatrix(5)
    whole.update(pred, target)
    for p, t in zip(pred, target):
        parts.update(torch.from_numpy(p).to(torch.uint8), torch.from_numpy(t))
    assert torch.equal(whole.matrix, parts.matrix) and whole.matrix.dtype == torch.int64
    whole.reset()
    assert whole.matrix.sum() == 0


def test_invalid_values_and_shapes_are_rejected():
    matrix = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="pred value 7"):
        matrix.update(np.array([0, 7]), np.array([0, 1]))
    with pytest.raises(ValueError, match="target value 3"):
        matrix.update(np.array([0, 1]), np.array([3, 1]))
    with pytest.raises(ValueError, match="shape"):
        matrix.update(np.zeros(3, np.int64), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="integer"):
        matrix.update(np.zeros(3), np.zeros(3, np.int64))
    # An invalid prediction on an ignored pixel is not scored, so it is not an error.
    matrix.update(np.array([7]), np.array([255]))
    assert matrix.matrix.sum() == 0


def test_pseudo_label_metrics_strict_lenient_and_labelled_fraction():
    metrics = PseudoLabelMetrics(4, has_background=True)
    metrics.update(PRED, TARGET)
    result = metrics.compute()
    # Strict with a background class: the 255 becomes class 0 and is right -> class 0: 2 / 5.
    np.testing.assert_allclose(result["strict"]["iou"][:3], [40.0, 50.0, 0.0])
    np.testing.assert_allclose(result["lenient"]["iou"][:3], [25.0, 50.0, 0.0])
    assert result["labelled_fraction"] == pytest.approx(100 * 7 / 8)
    # Without a background class the 255 is simply wrong.
    no_background = PseudoLabelMetrics(4, has_background=False)
    no_background.update(torch.from_numpy(PRED), torch.from_numpy(TARGET))
    np.testing.assert_allclose(no_background.compute()["strict"]["iou"][:3], [20.0, 50.0, 0.0])


def test_strict_equals_lenient_without_unlabelled_pixels():
    rng = np.random.default_rng(1)
    metrics = PseudoLabelMetrics(6, has_background=True)
    for _ in range(3):
        target = rng.integers(0, 6, (20, 20))
        target[rng.random(target.shape) < 0.2] = 255
        metrics.update(rng.integers(0, 6, (20, 20)), target)
    result = metrics.compute()
    assert result["strict"] == result["lenient"]
    assert result["labelled_fraction"] == 100.0


def test_merging_per_image_metrics_equals_one_pass():
    rng = np.random.default_rng(2)
    pairs = []
    for _ in range(3):
        pred, target = rng.integers(0, 5, (10, 10)), rng.integers(0, 5, (10, 10))
        pred[rng.random(pred.shape) < 0.3] = 255
        pairs.append((pred, target))
    one_pass = PseudoLabelMetrics(5, has_background=True)
    merged = PseudoLabelMetrics(5, has_background=True)
    for pred, target in pairs:
        one_pass.update(pred, target)
        part = PseudoLabelMetrics(5, has_background=True)
        part.update(pred, target)
        merged.merge(part)
    assert merged.compute() == one_pass.compute()
    with pytest.raises(ValueError, match="classes"):
        merged.strict.merge(ConfusionMatrix(4))


def test_all_reduce_sums_over_one_process_group(tmp_path):
    matrix = ConfusionMatrix(4)
    matrix.update(PRED, TARGET)
    before = matrix.matrix.clone()
    matrix.all_reduce()  # not initialised: no-op
    assert torch.equal(matrix.matrix, before)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        matrix.all_reduce()
    finally:
        dist.destroy_process_group()
    assert torch.equal(matrix.matrix, before)


def test_average_precision_hand_computed_ranking():
    scores = np.array([[0.9, 0.2, 0.1],
                       [0.8, 0.1, 0.4],
                       [0.7, 0.3, 0.35],
                       [0.6, 0.4, 0.8]])
    targets = np.array([[1, 0, 0],
                        [0, 0, 1],
                        [1, 0, 1],
                        [0, 0, 0]])
    # Class 0: hits at ranks 1 and 3 -> (1 + 2/3) / 2; class 1 has no positive (left out);
    # class 2: ranking 0.8 (miss), 0.4 (hit), 0.35 (hit) -> (1/2 + 2/3) / 2.
    expected = 100 * ((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 2
    assert average_precision(scores, targets) == pytest.approx(expected)
    assert average_precision(torch.tensor(scores), torch.tensor(targets)) == pytest.approx(expected)
    # Tied scores form one threshold: recall 1 at precision 1/2.
    assert average_precision(np.array([[0.5], [0.5]]), np.array([[1], [0]])) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="binary"):
        average_precision(scores, targets * 2)


def test_real_msrc_labels_match_a_per_class_reference():
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "msrc_v2"
    if not root.is_dir():
        pytest.skip(f"real data not found at {root}")
    matrix = ConfusionMatrix(23)
    intersection, union = np.zeros(23), np.zeros(23)
    for image_id in (root / "val.txt").read_text().split()[:6]:
        label = load_label_png(root / "labels" / f"{image_id}.png") - 1  # void 0 -> -1, classes 0..22
        target = np.where(label < 0, 255, label)
        pred = np.roll(target, 9, axis=1)  # a shifted "prediction" with void -> unlabelled
        matrix.update(pred, target)
        scored = target != 255
        for c in range(23):
            intersection[c] += np.sum(scored & (pred == c) & (target == c))
            union[c] += np.sum(scored & ((pred == c) | (target == c)))
    result = matrix.compute()
    present = union > 0
    np.testing.assert_allclose(np.array(result["iou"])[present], 100 * intersection[present] / union[present])
    assert np.isnan(np.array(result["iou"])[~present]).all()
    assert 0 < result["miou"] < 100


def test_format_iou_table():
    matrix = ConfusionMatrix(4, class_names=["bg", "cat", "dog", "cow"])
    matrix.update(PRED, TARGET)
    lines = format_iou_table(matrix.compute(), header="IoU").splitlines()
    assert lines == ["IoU", "  bg     20.00", "  cat    50.00", "  dog     0.00", "  cow        -",
                     "  mIoU   23.33"]
    unnamed = ConfusionMatrix(4)
    unnamed.update(PRED, TARGET)
    assert format_iou_table(unnamed.compute(), ["a", "b", "c", "d"]).splitlines()[1] == "  a      20.00"
