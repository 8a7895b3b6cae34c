"""Validate a dataset split on disk: every image and mask readable, sizes agreeing, label values valid.

Used by ``scripts/check_dataset.py``; a report lists every problem found instead of stopping at the
first, so one pass over a freshly prepared dataset says everything that is wrong with it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from rca.data.base import SegmentationDataset
from rca.data.palette import IGNORE_INDEX


@dataclass
class SplitReport:
    """What :func:`check_split` found in one split.

    Attributes:
        split: split name.
        items: images listed by the split.
        images: images read successfully.
        masks: masks read successfully (0 for a split without masks).
        problems: one line per problem: ``<id>: <what is wrong>``.
        histogram: ``(num_classes,)`` int64 pixel count of each label over the readable masks.
        ignored: pixels labelled 255.
    """

    split: str
    items: int = 0
    images: int = 0
    masks: int = 0
    problems: list[str] = field(default_factory=list)
    histogram: np.ndarray | None = None
    ignored: int = 0


class _ItemCheck(torch.utils.data.Dataset):
    """Item ``i`` -> (image ok, mask ok, problems, histogram, ignored) of ``dataset`` item ``i``."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[bool, bool, list[str], np.ndarray, int]:
        dataset, image_id = self.dataset, self.dataset.ids[index]
        problems: list[str] = []
        histogram = np.zeros(dataset.num_classes, dtype=np.int64)
        image = mask = None
        try:
            image = dataset.load_image(index)
        except Exception as error:  # noqa: BLE001 - every failure is a finding, reported with its message
            problems.append(f"{image_id}: image unreadable ({type(error).__name__}: {error})")
        if dataset.has_masks:
            try:
                mask = dataset.load_mask(index)
            except Exception as error:  # noqa: BLE001
                problems.append(f"{image_id}: mask unreadable ({type(error).__name__}: {error})")
        ignored = 0
        if mask is not None:
            try:
                dataset.check_mask(index, mask, image.shape[:2] if image is not None else mask.shape)
            except ValueError as error:
                problems.append(f"{image_id}: {error}")
            valid = mask[(mask >= 0) & (mask < dataset.num_classes)]
            histogram += np.bincount(valid.ravel(), minlength=dataset.num_classes)[: dataset.num_classes]
            ignored = int((mask == IGNORE_INDEX).sum())
        return image is not None, mask is not None, problems, histogram, ignored


def check_split(dataset: SegmentationDataset, split: str, *, workers: int = 0, limit: int | None = None) -> SplitReport:
    """Read every item of ``dataset`` and report what is wrong.

    Checks: duplicate ids; each image readable as RGB; each mask (when the split has masks) readable,
    of the image's height and width, with values in ``0 .. num_classes - 1`` or 255. Also counts
    the pixels of each class.

    Args:
        dataset: a built dataset (its constructor already checked the root and split list).
        split: split name, for the report.
        workers: DataLoader worker processes (0: read in this process).
        limit: check only the first ``limit`` items (``None``: all).

    Returns:
        The split's :class:`SplitReport`.
    """
    checker = _ItemCheck(dataset)
    if limit is not None:
        checker = torch.utils.data.Subset(checker, range(min(limit, len(dataset))))
    report = SplitReport(split, items=len(checker), histogram=np.zeros(dataset.num_classes, dtype=np.int64))
    duplicates = [image_id for image_id, count in Counter(dataset.ids).items() if count > 1]
    report.problems += [f"{image_id}: listed more than once" for image_id in duplicates]
    loader = torch.utils.data.DataLoader(checker, batch_size=None, num_workers=workers, collate_fn=lambda x: x)
    for image_ok, mask_ok, problems, histogram, ignored in loader:
        report.images += image_ok
        report.masks += mask_ok
        report.problems += problems
        report.histogram += np.asarray(histogram)
        report.ignored += ignored
    return report


def format_report(report: SplitReport, class_names: list[str]) -> str:
    """The report as text: counts, then the class pixel histogram (pixels and percent of labelled)."""
    lines = [
        f"split {report.split}: {report.items} listed, {report.images} images and {report.masks} masks read, "
        f"{len(report.problems)} problem(s)"
    ]
    total = int(report.histogram.sum()) if report.histogram is not None else 0
    if total:
        lines.append(f"  class pixel histogram ({total} labelled pixels, {report.ignored} ignored):")
        width = max(len(name) for name in class_names)
        for label, (name, count) in enumerate(zip(class_names, report.histogram.tolist())):
            lines.append(f"    {label:3d} {name:<{width}} {count:12d} {100 * count / total:6.2f}%")
    return "\n".join(lines)
