"""Confusion-matrix mIoU, pseudo-label scoring and mAP (rca.metrics) against hand-computed values."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rca.io import load_label_png
from rca.metrics import ConfusionMatrix, PseudoLabelMetrics, average_precision, format_iou_table
from rca.segment import evaluate_segmentation

from helpers import spawn_gloo

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


def test_all_reduce_without_a_process_group_is_a_no_op():
    matrix = ConfusionMatrix(4)
    matrix.update(PRED, TARGET)
    before = matrix.matrix.clone()
    matrix.all_reduce()
    assert torch.equal(matrix.matrix, before)


# --- two gloo processes ------------------------------------------------------------------------
# Rank 0 scores (PRED, TARGET), rank 1 (PRED_1, TARGET_1): different counts, so a reduction that
# does nothing, or one that keeps a single rank, shows.
TARGET_1 = np.array([3, 3, 1, 255, 2, 2])
PRED_1 = np.array([3, 1, 1, 0, 255, 2])

# evaluate_segmentation on 4 one-row images of 3 classes; the model predicts PREDICTIONS exactly.
PREDICTIONS = [[0, 0, 1, 1], [2, 2, 2, 2], [0, 1, 1, 1], [1, 1, 2, 2]]
MASKS = [[0, 0, 1, 1], [2, 2, 1, 255], [0, 0, 1, 1], [1, 1, 2, 2]]
# Over all 4 images (15 scored pixels): class 0 TP 3, GT 4, predicted 3 -> 3/4; class 1 TP 6, GT 7,
# predicted 7 -> 6/8; class 2 TP 4, GT 4, predicted 5 (one on the ignored pixel is not counted) -> 4/5.
# Rank 0 alone (images 0, 2) would give [75, 80, NaN], rank 1 alone (1, 3) [NaN, 66.7, 80].
EXPECTED_IOU = [75.0, 75.0, 80.0]


class OneHotImages:
    """Split of PREDICTIONS as one-hot ``(3, 1, 4)`` images with MASKS, in the evaluate_segmentation API."""

    num_classes = 3
    class_names = ["a", "b", "c"]
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0]

    def __len__(self):
        return len(PREDICTIONS)

    def __getitem__(self, index):
        image = torch.nn.functional.one_hot(torch.tensor(PREDICTIONS[index]), 3).T.float()[:, None]
        return {"id": f"image{index}", "image": image, "mask": torch.tensor([MASKS[index]])}


def identity_model() -> torch.nn.Module:
    """1x1 convolution that passes the image channels through as logits."""

    class Identity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1, bias=False)
            torch.nn.init.eye_(self.conv.weight[:, :, 0, 0])

        def forward(self, images):
            return {"logits": self.conv(images)}

    return Identity().eval()


def _distributed_worker(rank, world_size, out_dir):
    matrix = ConfusionMatrix(4)
    pseudo = PseudoLabelMetrics(4, has_background=True)
    pred, target = (PRED, TARGET) if rank == 0 else (PRED_1, TARGET_1)
    matrix.update(pred, target)
    pseudo.update(pred, target)
    matrix.all_reduce()
    pseudo.all_reduce()
    evaluation = evaluate_segmentation(identity_model(), OneHotImages(), shard=(rank, world_size), progress=False)
    torch.save({"matrix": matrix.matrix, "strict": pseudo.strict.matrix, "lenient": pseudo.lenient.matrix,
                "labelled": pseudo.labelled, "evaluation": evaluation}, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """What each of two gloo processes held after its all-reduces (one spawn for the tests below)."""
    out_dir = tmp_path_factory.mktemp("two_ranks")
    spawn_gloo(_distributed_worker, 2, out_dir, str(out_dir))
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


def test_all_reduce_sums_the_counts_of_two_processes(two_ranks):
    matrix, pseudo = ConfusionMatrix(4), PseudoLabelMetrics(4, has_background=True)
    for pred, target in [(PRED, TARGET), (PRED_1, TARGET_1)]:
        matrix.update(pred, target)
        pseudo.update(pred, target)
    for state in two_ranks:
        assert torch.equal(state["matrix"], matrix.matrix)
        assert torch.equal(state["strict"], pseudo.strict.matrix)
        assert torch.equal(state["lenient"], pseudo.lenient.matrix)
        assert state["labelled"].tolist() == [7 + 5, 8 + 6]


def test_evaluate_segmentation_shards_add_up_to_the_whole_split(two_ranks):
    whole = evaluate_segmentation(identity_model(), OneHotImages(), progress=False)
    np.testing.assert_allclose(whole["iou"], EXPECTED_IOU)
    assert whole["num_pixels"] == 15
    for state in two_ranks:
        assert state["evaluation"]["iou"] == whole["iou"]
        assert state["evaluation"]["num_pixels"] == 15
        assert state["evaluation"]["miou"] == pytest.approx(230 / 3)


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
