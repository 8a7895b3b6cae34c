"""Segmentation and tag-prediction metrics: confusion-matrix mIoU and multi-label mAP.

Protocol (PASCAL VOC / the WSSS literature): one confusion matrix accumulated over the whole
dataset (not averaged per image); IoU_c = TP_c / (TP_c + FP_c + FN_c); mIoU = mean IoU over the
classes that occur in the ground truth or the prediction; pixels whose ground truth is the ignore
index (255) are not scored. All numbers are percentages.

Pseudo labels may leave pixels unlabelled (255). :class:`PseudoLabelMetrics` scores them two ways:
*strict* (an unlabelled pixel counts as background on datasets with one, otherwise as wrong) and
*lenient* (unlabelled pixels are dropped, the protocol of EPS/RCA-style pseudo-label tables), and
reports the fraction of pixels labelled, without which a lenient score means little.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist


def _flat_int64(values, name: str):
    """Flatten a torch tensor or NumPy array of class indices to int64 (tensors stay on their device)."""
    if isinstance(values, torch.Tensor):
        if values.is_floating_point() or values.is_complex():
            raise ValueError(f"ConfusionMatrix.update: {name} must hold integer class indices, got {values.dtype}")
        return values.reshape(-1).to(torch.int64)
    values = np.asarray(values)
    if not (np.issubdtype(values.dtype, np.integer) or values.dtype == bool):
        raise ValueError(f"ConfusionMatrix.update: {name} must hold integer class indices, got {values.dtype}")
    return values.reshape(-1).astype(np.int64, copy=False)


def _all_reduce_sum(counts: torch.Tensor) -> torch.Tensor:
    """Sum a CPU tensor over all ranks if ``torch.distributed`` is initialised; returns a CPU tensor.

    NCCL only reduces CUDA tensors, so the counts travel through the current CUDA device there.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return counts
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else counts.device
    counts = counts.to(device)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return counts.cpu()


class ConfusionMatrix:
    """Dataset-level confusion matrix for semantic segmentation (int64 counts, bincount based).

    Rows are ground-truth classes ``0..C-1``; columns are predicted classes ``0..C-1`` plus one
    extra "no class" column for predictions equal to ``ignore_index`` (255) on scored pixels. Such a
    pixel is a false negative of its true class and a false positive of no class (it lowers that
    class's IoU and the accuracies, nothing else).

    Args:
        num_classes: number of classes ``C``.
        ignore_index: target value of unscored pixels, and prediction value meaning "no class".
        class_names: optional ``C`` names; :meth:`compute` then also returns ``iou_by_name``.

    Raises:
        ValueError: if ``num_classes < 1`` or ``class_names`` does not have ``C`` entries.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None):
        if num_classes < 1:
            raise ValueError(f"ConfusionMatrix: num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ConfusionMatrix: ignore_index {ignore_index} collides with a class index "
                             f"(0..{num_classes - 1})")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"ConfusionMatrix: got {len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else None
        self.matrix = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64)

    def reset(self) -> None:
        """Zero all counts."""
        self.matrix.zero_()

    def update(self, pred, target, drop_pred_ignore: bool = False) -> None:
        """Add one batch of predictions.

        Args:
            pred: integer torch tensor or NumPy array, any shape, values in ``0..C-1`` or
                ``ignore_index`` ("no class").
            target: integer tensor/array of the same shape, values in ``0..C-1`` or ``ignore_index``
                (pixel not scored).
            drop_pred_ignore: also skip pixels whose prediction is ``ignore_index`` (the lenient
                pseudo-label protocol) instead of counting them as wrong.

        Torch inputs are counted on their own device (GPU bincount); only the ``C x (C+1)`` result
        is moved to the CPU.

        Raises:
            ValueError: on a shape mismatch, non-integer input, or a value outside ``0..C-1`` that is
                not ``ignore_index`` (the message names the value).
        """
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"ConfusionMatrix.update: pred shape {tuple(pred.shape)} != target shape "
                             f"{tuple(target.shape)}")
        pred, target = _flat_int64(pred, "pred"), _flat_int64(target, "target")
        if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
            device = (pred if isinstance(pred, torch.Tensor) else target).device
            pred, target = torch.as_tensor(pred, device=device), torch.as_tensor(target, device=device)
        C = self.num_classes
        keep = target != self.ignore_index
        if drop_pred_ignore:
            keep &= pred != self.ignore_index
        pred, target = pred[keep], target[keep]
        self._check_range(target, "target", allow_ignore=False)
        self._check_range(pred, "pred", allow_ignore=True)
        no_class = pred == self.ignore_index
        if isinstance(pred, torch.Tensor):
            pred = torch.where(no_class, C, pred)
            counts = torch.bincount(target * (C + 1) + pred, minlength=C * (C + 1)).cpu()
        else:
            pred = np.where(no_class, C, pred)
            counts = torch.from_numpy(np.bincount(target * (C + 1) + pred, minlength=C * (C + 1)))
        self.matrix += counts.reshape(C, C + 1)

    def _check_range(self, values, name: str, allow_ignore: bool) -> None:
        """Raise ValueError naming the first value outside ``0..C-1`` (or ignore, if allowed)."""
        bad = (values < 0) | (values >= self.num_classes)
        if allow_ignore:
            bad &= values != self.ignore_index
        if bad.any():
            value = int(values[bad][0])
            raise ValueError(f"ConfusionMatrix.update: {name} value {value} is outside 0..{self.num_classes - 1}"
                             f" and is not the ignore index {self.ignore_index}; check num_classes and the"
                             f" label encoding")

    def merge(self, other: "ConfusionMatrix") -> None:
        """Add the counts of ``other`` (e.g. one computed in a worker process) to these.

        Raises:
            ValueError: if ``other`` has a different number of classes.
        """
        if other.num_classes != self.num_classes:
            raise ValueError(f"ConfusionMatrix.merge: {other.num_classes} classes into {self.num_classes}")
        self.matrix += other.matrix.to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the counts over all ranks when ``torch.distributed`` is initialised (no-op otherwise)."""
        self.matrix = _all_reduce_sum(self.matrix)

    def compute(self) -> dict:
        """Scores of the counts so far.

        Returns:
            dict with ``miou`` (float, %; mean over classes in the ground truth or the prediction,
            NaN if none), ``iou`` (list of ``C`` floats, %, NaN for classes absent from both),
            ``pixel_accuracy`` (%, correct / scored pixels), ``mean_accuracy`` (%, mean recall over
            classes in the ground truth), ``num_pixels`` (int, scored pixels) and, with class names,
            ``iou_by_name`` (name -> IoU %).
        """
        matrix = self.matrix.double()
        C = self.num_classes
        true_positive = matrix.diagonal()
        ground_truth = matrix.sum(dim=1)
        predicted = matrix[:, :C].sum(dim=0)
        union = ground_truth + predicted - true_positive
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        iou = torch.where(union > 0, 100 * true_positive / union.clamp(min=1), nan)
        recall = torch.where(ground_truth > 0, 100 * true_positive / ground_truth.clamp(min=1), nan)
        total = matrix.sum()
        result = {
            "miou": float(iou.nanmean()),
            "iou": iou.tolist(),
            "pixel_accuracy": float(100 * true_positive.sum() / total) if total > 0 else float("nan"),
            "mean_accuracy": float(recall.nanmean()),
            "num_pixels": int(self.matrix.sum()),
        }
        if self.class_names is not None:
            result["iou_by_name"] = dict(zip(self.class_names, result["iou"]))
        return result


class PseudoLabelMetrics:
    """Strict and lenient mIoU of pseudo labels against ground truth, and the fraction labelled.

    * strict: a 255 (unlabelled) pseudo-label pixel counts as background (class 0) when
      ``has_background``, otherwise as wrong (a false negative of its true class);
    * lenient: pixels with a 255 pseudo label are dropped (EPS/RCA protocol);
    * ``labelled_fraction``: pseudo-label pixels that are not 255 over all pseudo-label pixels
      (whatever the ground truth says), in %.

    With no 255 in the pseudo labels, strict and lenient are equal.
    """

    def __init__(self, num_classes: int, has_background: bool, ignore_index: int = 255,
                 class_names: Sequence[str] | None = None):
        self.has_background = has_background
        self.ignore_index = ignore_index
        self.strict = ConfusionMatrix(num_classes, ignore_index, class_names)
        self.lenient = ConfusionMatrix(num_classes, ignore_index, class_names)
        self.labelled = torch.zeros(2, dtype=torch.int64)  # [labelled pixels, all pixels]

    def reset(self) -> None:
        """Zero all counts."""
        self.strict.reset()
        self.lenient.reset()
        self.labelled.zero_()

    def update(self, pseudo_label, target) -> None:
        """Add one image: ``pseudo_label`` and ``target`` as in :meth:`ConfusionMatrix.update`."""
        unlabelled = pseudo_label == self.ignore_index
        strict_pred = pseudo_label
        if self.has_background:
            strict_pred = (torch.where(unlabelled, 0, pseudo_label) if isinstance(pseudo_label, torch.Tensor)
                           else np.where(unlabelled, 0, pseudo_label))
        self.strict.update(strict_pred, target)
        self.lenient.update(pseudo_label, target, drop_pred_ignore=True)
        size = int(np.prod(tuple(pseudo_label.shape)))
        self.labelled += torch.tensor([size - int(unlabelled.sum()), size])

    def merge(self, other: "PseudoLabelMetrics") -> None:
        """Add the counts of ``other`` (e.g. one computed in a worker process) to these."""
        self.strict.merge(other.strict)
        self.lenient.merge(other.lenient)
        self.labelled += other.labelled

    def all_reduce(self) -> None:
        """Sum the counts over all ranks when ``torch.distributed`` is initialised (no-op otherwise)."""
        self.strict.all_reduce()
        self.lenient.all_reduce()
        self.labelled = _all_reduce_sum(self.labelled)

    def compute(self) -> dict:
        """``{"strict": ConfusionMatrix.compute(), "lenient": ..., "labelled_fraction": %}``."""
        labelled, total = self.labelled.tolist()
        return {
            "strict": self.strict.compute(),
            "lenient": self.lenient.compute(),
            "labelled_fraction": 100 * labelled / total if total else float("nan"),
        }


def average_precision(scores, targets) -> float:
    """Mean non-interpolated average precision (mAP, %) of multi-label tag predictions.

    Per class, AP = sum over distinct score thresholds (descending) of
    ``(recall_n - recall_{n-1}) * precision_n`` (the definition of scikit-learn's
    ``average_precision_score``; tied scores form one threshold). The mean is over classes with at
    least one positive.

    Args:
        scores: ``(N, K)`` float tensor/array, higher = more confident (logits or probabilities).
        targets: ``(N, K)`` binary {0, 1} tensor/array.

    Returns:
        mAP in percent (NaN if no class has a positive).

    Raises:
        ValueError: on a shape mismatch, non-2-D input, or targets other than 0/1.
    """
    scores = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    targets = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"average_precision: scores and targets must both be (N, K), got {scores.shape} "
                         f"and {targets.shape}")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("average_precision: targets must be binary (0 or 1)")
    precisions = []
    for score, target in zip(scores.T.astype(np.float64), targets.T.astype(np.float64)):
        positives = target.sum()
        if positives == 0:
            continue
        order = np.argsort(-score, kind="stable")
        score, target = score[order], target[order]
        last_of_tie = np.r_[score[1:] != score[:-1], True]
        true_positive = np.cumsum(target)[last_of_tie]
        seen = np.flatnonzero(last_of_tie) + 1
        recall = true_positive / positives
        precision = true_positive / seen
        precisions.append(np.sum(np.diff(recall, prepend=0.0) * precision))
    return 100 * float(np.mean(precisions)) if precisions else float("nan")


def format_iou_table(result: dict, class_names: Sequence[str] | None = None,
                     header: str = "IoU (%) per class") -> str:
    """Plain-text table of per-class IoU, one class a line, then the mIoU when ``result`` has one.

    Args:
        result: :meth:`ConfusionMatrix.compute` output, or any dict with ``iou_by_name``
            (name -> IoU %) or ``iou`` (list of IoU %); ``iou_by_name`` wins when both are present.
        class_names: names for ``result["iou"]`` when it has no ``iou_by_name`` (default: indices).
        header: first line.

    Returns:
        The table; NaN (class absent from ground truth and prediction) is shown as ``-``.
    """
    if "iou_by_name" in result:
        rows = list(result["iou_by_name"].items())
    else:
        names = class_names if class_names is not None else [str(i) for i in range(len(result["iou"]))]
        rows = list(zip(names, result["iou"]))
    if "miou" in result:
        rows.append(("mIoU", result["miou"]))
    width = max((len(name) for name, _ in rows), default=0)
    lines = [header]
    lines += [f"  {name:<{width}}  " + ("     -" if math.isnan(value) else f"{value:6.2f}") for name, value in rows]
    return "\n".join(lines)
