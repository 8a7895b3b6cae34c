"""Datasets, joint image+mask transforms and palettes.

Every dataset yields items ``{"id", "image", "tags"[, "mask"]}`` (see :mod:`rca.data.base`) and is
built by name with :func:`build_dataset`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

from rca.data.ade20k import ADE20K
from rca.data.base import Item, SegmentationDataset
from rca.data.camvid import CamVid
from rca.data.cityscapes import Cityscapes
from rca.data.coco import COCOSegmentation
from rca.data.cocostuff import COCOStuff
from rca.data.folder import FolderSegmentation
from rca.data.palette import IGNORE_INDEX, make_palette
from rca.data.pascal_context import PascalContext
from rca.data.synthetic import SyntheticShapes
from rca.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, eval_transform, train_transform
from rca.data.voc import VOCSegmentation

DATASETS: dict[str, type[SegmentationDataset]] = {
    "voc": VOCSegmentation,
    "coco": COCOSegmentation,
    "folder": FolderSegmentation,
    "camvid": CamVid,
    "cityscapes": Cityscapes,
    "ade20k": ADE20K,
    "cocostuff": COCOStuff,
    "pascal_context": PascalContext,
    "synthetic": SyntheticShapes,
}


def dataset_options(name: str) -> list[str]:
    """The keyword options (``data.options`` keys) that dataset ``name`` accepts."""
    parameters = inspect.signature(DATASETS[name].__init__).parameters.values()
    return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]


def build_dataset(
    name: str,
    root: str | os.PathLike | None,
    split: str,
    transform: Callable[[Item], Item] | None = None,
    **options,
) -> SegmentationDataset:
    """Build dataset ``name`` (one of :data:`DATASETS`: ``voc``, ``coco``, ``folder``, ``camvid``,
    ``cityscapes``, ``ade20k``, ``cocostuff``, ``pascal_context``, ``synthetic``).

    Args:
        name: dataset family.
        root: its folder (ignored by ``synthetic``).
        split: split name (``train``, ``val``, ``train_aug``, ``train2014`` ...).
        transform: optional callable applied to each item dict.
        **options: dataset-specific keyword options (``data.options`` in the config).

    Raises:
        ValueError: unknown ``name``.
        TypeError: an option the dataset does not take (the message lists those it takes).
        FileNotFoundError: missing root or split file (raised by the dataset, naming the path).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r} (data.name); choose one of {', '.join(DATASETS)}")
    allowed = dataset_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"dataset {name!r} has no option(s) {', '.join(unknown)} (data.options); "
            f"it takes: {', '.join(allowed) or 'none'}"
        )
    return DATASETS[name](root, split, transform, **options)


__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ADE20K",
    "CamVid",
    "Cityscapes",
    "COCOSegmentation",
    "COCOStuff",
    "FolderSegmentation",
    "PascalContext",
    "SegmentationDataset",
    "SyntheticShapes",
    "VOCSegmentation",
    "build_dataset",
    "dataset_options",
    "denormalize",
    "eval_transform",
    "make_palette",
    "train_transform",
]
