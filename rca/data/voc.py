"""PASCAL VOC 2012 segmentation (Everingham et al., IJCV 2010), with the SBD "aug" masks.

Layout (the VOCdevkit one)::

    VOC2012/
      JPEGImages/<id>.jpg
      SegmentationClassAug/<id>.png     preferred (10,582 train_aug masks of Hariharan et al.)
      SegmentationClass/<id>.png        used when there is no SegmentationClassAug
      ImageSets/Segmentation/<split>.txt

``root`` may be ``VOC2012`` itself or a folder holding ``VOCdevkit/VOC2012``. Split files hold one
id per line; the DeepLab list style ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` is read
too (the id is the stem of the first path). Masks are palette or greyscale PNGs with values 0..20
(0 = background) and 255 = ignore (object borders, "difficult" regions).

Image-level tags come from ``cls_labels`` when given: the ``cls_labels.npy`` of PSA / IRN (Ahn &
Kwak, CVPR 2018; Ahn et al., CVPR 2019), a pickled dict ``{id: (20,) 0/1 vector}`` keyed by the id
string (PSA) or by the id as an integer without its underscore, ``2007_000032 -> 2007000032`` (IRN).
Otherwise tags are the foreground classes present in the mask, which is what the released
``make_cls_labels.py`` scripts compute from SegmentationClassAug. A split without masks and without
``cls_labels`` (the VOC2012 ``test`` list: 1,456 JPEGs, no annotations) gives items ``{"id",
"image"}`` only, for prediction (``stages/infer.py --split test``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rca.data.base import Item, SegmentationDataset, read_id_list, read_image, require_path
from rca.data.palette import make_palette
from rca.errors import DataError
from rca.io import load_label_png

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


def resolve_root(root: Path) -> Path:
    """The VOC2012 folder: ``root`` itself or ``root/VOCdevkit/VOC2012`` (raises FileNotFoundError)."""
    for candidate in (root, root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise FileNotFoundError(
        f"PASCAL VOC not found under {root}: expected {root}/JPEGImages or "
        f"{root}/VOCdevkit/VOC2012/JPEGImages. Set `data.root` to the VOC2012 folder (scripts/download_voc.sh "
        f"fetches it; scripts/prepare_voc.py adds SegmentationClassAug, train_aug.txt and cls_labels.npy)."
    )


def load_cls_labels(path: str | os.PathLike, ids: list[str]) -> np.ndarray:
    """Tags of ``ids`` from a PSA/IRN ``cls_labels.npy`` as an ``(len(ids), 20)`` float32 array.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a dict of 20-vectors or lacks one of ``ids``.
    """
    path = require_path(path, "cls_labels file", "Fix the `cls_labels` option of the VOC dataset.")
    table = np.load(path, allow_pickle=True)
    table = table.item() if table.dtype == object and table.shape == () else table
    if not isinstance(table, dict):
        raise DataError(f"{path}: expected a pickled dict {{image id: 20-vector}} (PSA/IRN format)")
    tags = np.zeros((len(ids), len(VOC_CLASSES) - 1), dtype=np.float32)
    for row, image_id in enumerate(ids):
        key = image_id
        if key not in table and image_id.replace("_", "").isdigit():
            key = int(image_id.replace("_", ""))
        if key not in table:
            raise DataError(f"{path} has no entry for image {image_id!r} (nor for the key {key})")
        vector = np.asarray(table[key], dtype=np.float32).reshape(-1)
        if vector.shape != (tags.shape[1],):
            raise DataError(f"{path}: entry {image_id!r} has {vector.size} values, expected {tags.shape[1]}")
        tags[row] = vector
    return tags


class VOCSegmentation(SegmentationDataset):
    """PASCAL VOC 2012: 21 classes (background + 20 objects), masks where the split has them.

    Args:
        root: the ``VOC2012`` folder or a folder holding ``VOCdevkit/VOC2012``.
        split: name of a list in ``ImageSets/Segmentation`` (``train``, ``train_aug``, ``val``,
            ``test`` ...).
        transform: optional callable applied to each item dict.
        cls_labels: optional path to a PSA/IRN ``cls_labels.npy``; then tags come from it.

    Raises:
        FileNotFoundError: missing root, split file or ``cls_labels`` file; or masks for only some of
            the split's images (the message says which mask folder to get).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        transform: Callable[[Item], Item] | None = None,
        *,
        cls_labels: str | os.PathLike | None = None,
    ) -> None:
        self.root, self.split = resolve_root(Path(root).expanduser()), split
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        hint = (
            "Choose a split that has a list there, or set `data.root` to the VOC2012 folder; "
            "train_aug.txt is written by scripts/prepare_voc.py."
        )
        ids = [Path(line.split()[0]).stem for line in read_id_list(split_file, hint)]
        mask_dir = self.root / "SegmentationClassAug"
        self.mask_dir = mask_dir if mask_dir.is_dir() else self.root / "SegmentationClass"
        has_masks = self._find_masks(ids, split)
        super().__init__(
            ids, VOC_CLASSES, has_background=True, has_masks=has_masks, palette=make_palette(len(VOC_CLASSES)),
            transform=transform, has_tags=has_masks or cls_labels is not None,
        )
        if cls_labels is not None:
            self._tags = load_cls_labels(cls_labels, self.ids)  # serves load_tags and every item

    def _find_masks(self, ids: list[str], split: str) -> bool:
        present = {name[:-4] for name in os.listdir(self.mask_dir)} if self.mask_dir.is_dir() else set()
        missing = [image_id for image_id in ids if image_id not in present]
        if missing and len(missing) < len(ids):
            raise FileNotFoundError(
                f"VOC split {split!r}: {len(missing)} of {len(ids)} masks are missing from {self.mask_dir} "
                f"(e.g. {self.mask_dir / (missing[0] + '.png')}). For train_aug, write the SBD-augmented "
                f"masks to {self.root / 'SegmentationClassAug'} with scripts/prepare_voc.py."
            )
        return not missing

    def require_tags(self, key: str) -> None:
        if not self.has_tags:
            raise ValueError(
                f"{key}: VOC split {self.split!r} has no image-level tags: no masks in {self.mask_dir} and no "
                f"cls_labels file. Write the masks (scripts/prepare_voc.py makes SegmentationClassAug) or set "
                f"data.options.cls_labels to a PSA/IRN cls_labels.npy"
            )

    def load_image(self, index: int) -> np.ndarray:
        return read_image(self.root / "JPEGImages" / f"{self.ids[index]}.jpg")

    def load_mask(self, index: int) -> np.ndarray:
        return load_label_png(self.mask_dir / f"{self.ids[index]}.png")
