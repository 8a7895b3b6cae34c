"""What every dataset of the project shares: the item format, image-level tags, file checks.

An item is a dict ``{"id": str, "image": (H, W, 3) uint8 RGB, "tags": (T,) float32 multi-hot,
"mask": (H, W) int64}``; ``mask`` only when the dataset has masks (255 = ignore), ``tags`` only when
it has tags (``has_tags``). Tags are the image-level labels of weakly supervised segmentation: with
a background class (VOC, COCO) tag ``j`` is class ``j + 1`` and ``T = num_classes - 1``; without one
(MSRC, CamVid) tag ``j`` is class ``j`` and ``T = num_classes``
(:class:`rca.data.label_space.LabelSpace`, a dataset's ``label_space``). By default they come from
the mask; a split with neither masks nor a tag file (VOC's ``test``: images only) yields items
``{"id", "image"}``, enough to predict on (``stages/infer.py --split``) but not to train the
classifier or make CAMs (:meth:`SegmentationDataset.require_tags`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rca.data.label_space import LabelSpace
from rca.data.palette import IGNORE_INDEX
from rca.errors import BadItemError, DataError
from rca.io import SKIP_HINT, load_label_png, reading

Item = dict[str, Any]


def require_path(path: str | os.PathLike, what: str, hint: str) -> Path:
    """Return ``path`` as a Path if it exists, else raise FileNotFoundError naming it and the fix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}. {hint}")
    return path


def glob_files(folder: Path, pattern: str, hint: str) -> list[Path]:
    """The files of ``folder`` matching ``pattern``, sorted; FileNotFoundError with ``hint`` if none."""
    files = sorted(folder.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no {folder}/{pattern} files. {hint}")
    return files


def read_id_list(path: str | os.PathLike, hint: str) -> list[str]:
    """The non-empty lines of a split file, stripped.

    Raises:
        FileNotFoundError: no such file (the message ends with ``hint``).
        DataError: the file lists no images.
    """
    path = require_path(path, "split file", hint)
    with open(path) as f:
        ids = [line.strip() for line in f if line.strip()]
    if not ids:
        raise DataError(f"split file {path} lists no images: list one image id per line, or choose another split")
    return ids


def label_lookup(mapping: Mapping[int, int]) -> np.ndarray:
    """A lookup table ``raw mask value -> label`` for :func:`apply_lookup`.

    Args:
        mapping: raw value (>= 0) -> label (0..254, or 255 = ignore). Raw values not in it map to 255.

    Returns:
        ``(max(256, max raw + 2),)`` int64 array; its last entry is 255, so :func:`apply_lookup` sends
        every raw value past the table there.
    """
    size = max(256, max(mapping, default=0) + 2)
    table = np.full(size, IGNORE_INDEX, dtype=np.int64)
    if mapping:
        table[list(mapping)] = list(mapping.values())
    return table


def apply_lookup(table: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """``(H, W)`` int64 labels ``table[raw]``; raw values beyond the table (or negative) become 255."""
    raw = np.asarray(raw, dtype=np.int64)
    return table[np.where((raw < 0) | (raw >= len(table)), len(table) - 1, raw)]


def read_image(path: str | os.PathLike, fix: str = SKIP_HINT) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB.

    EXIF orientation is deliberately not applied: annotations (COCO's polygons, VOC's masks) are
    drawn on the stored pixel grid.

    Raises:
        BadItemError: the file is missing, truncated or not an image; the message names it and
            ends with ``fix`` (by default: replace it, leave it out or pass ``--skip-bad``).
    """
    with reading(path, "image", fix), Image.open(path) as image:
        return np.array(image.convert("RGB"))  # a writable copy (torch.from_numpy needs one)


def tags_from_mask(mask: np.ndarray, num_classes: int, has_background: bool) -> np.ndarray:
    """Image-level tags of a label map: which classes occur in it (ignore pixels don't count).

    Args:
        mask: ``(H, W)`` integer label map, values in ``0 .. num_classes - 1`` or 255.
        num_classes: number of classes, background included when there is one.
        has_background: whether class 0 is background (then it gets no tag).

    Returns:
        ``(num_classes - 1,)`` or ``(num_classes,)`` float32 multi-hot vector.
    """
    return LabelSpace.unnamed(num_classes, has_background).tags_of_mask(mask, IGNORE_INDEX)


class SegmentationDataset(torch.utils.data.Dataset):
    """Base class of the datasets: builds the item dict, checks it, applies ``transform``.

    Subclasses set the attributes below in ``__init__`` and implement :meth:`load_image`, plus
    :meth:`load_mask` when ``has_masks``. Tags come from the mask by default; a dataset with a
    cheaper or different source (COCO's annotations, VOC's ``cls_labels.npy``) overrides
    :meth:`image_tags` or fills ``_tags``; one with neither masks nor such a source passes
    ``has_tags=False``.

    Attributes:
        ids: image ids, in split-file order.
        class_names: all class names; index = label value; background first when present.
        num_classes: ``len(class_names)``.
        has_background: whether class 0 is background (it then has no tag).
        has_masks: whether items carry ``mask``.
        has_tags: whether items carry ``tags``.
        palette: ``(256, 3)`` uint8 colour table for label PNGs.
        transform: callable applied to each item dict (e.g. :func:`rca.data.transforms.train_transform`).
    """

    def __init__(
        self,
        ids: Sequence[str],
        class_names: Sequence[str],
        *,
        has_background: bool,
        has_masks: bool,
        palette: np.ndarray,
        transform: Callable[[Item], Item] | None = None,
        has_tags: bool = True,
    ) -> None:
        self.ids = list(ids)
        self.class_names = list(class_names)
        self.has_background = has_background
        self.has_masks = has_masks
        self.has_tags = has_tags
        self.palette = palette
        self.transform = transform
        self._tags: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def label_space(self) -> LabelSpace:
        """Class names and background flag, with the tag <-> label conversions."""
        return LabelSpace(tuple(self.class_names), self.has_background)

    @property
    def num_tags(self) -> int:
        """Length of the tag vector: foreground classes only when there is a background class."""
        return self.label_space.num_tags

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, index: int) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB image of item ``index``."""
        raise NotImplementedError

    def load_mask(self, index: int) -> np.ndarray:
        """``(H, W)`` int64 label map of item ``index``: 0 .. num_classes - 1, 255 = ignore."""
        raise NotImplementedError

    def image_tags(self, index: int, mask: np.ndarray | None = None) -> np.ndarray:
        """``(num_tags,)`` float32 tags of item ``index``; by default the classes in its mask.

        ``mask`` is the item's mask when the caller has already read it (saves a second read).
        """
        if mask is None:
            mask = self.load_mask(index)
        return tags_from_mask(mask, self.num_classes, self.has_background)

    def require_tags(self, key: str) -> None:
        """Raise ValueError, naming the config ``key`` that chose this split, if its items have no tags.

        The classifier trains on tags and CAMs are made for the tagged classes; a split without
        masks has tags only from a tag file (VOC: the ``cls_labels`` option).
        """
        if not self.has_tags:
            raise ValueError(f"{key}: this {type(self).__name__} split has no image-level tags (no masks and no "
                             f"tag file, e.g. VOC's data.options.cls_labels): choose a split with masks or give "
                             f"its tag file")

    def load_tags(self) -> np.ndarray:
        """``(len(self), num_tags)`` float32 tags of all items, computed once and kept in memory.

        Raises:
            ValueError: the items have no tags (``has_tags`` false).
        """
        self.require_tags("load_tags()")
        if self._tags is None:
            tags = np.zeros((len(self), self.num_tags), dtype=np.float32)
            for index in range(len(self)):
                tags[index] = self.image_tags(index)
            self._tags = tags
        return self._tags

    def __getitem__(self, index: int) -> Item:
        item: Item = {"id": self.ids[index], "image": self.load_image(index)}
        mask = None
        if self.has_masks:
            mask = self.load_mask(index)
            self.check_mask(index, mask, item["image"].shape[:2])
            item["mask"] = mask
        if self.has_tags:
            item["tags"] = self._tags[index].copy() if self._tags is not None else self.image_tags(index, mask)
        return self.transform(item) if self.transform is not None else item

    def check_mask(self, index: int, mask: np.ndarray, image_size: tuple[int, int]) -> None:
        """Raise :class:`rca.errors.BadItemError` if ``mask`` is not ``image_size`` or holds values
        other than classes and 255."""
        if mask.shape != image_size:
            raise BadItemError(
                f"{type(self).__name__} item {self.ids[index]!r}: mask is {mask.shape[0]}x{mask.shape[1]} "
                f"but image is {image_size[0]}x{image_size[1]}; {SKIP_HINT}"
            )
        invalid = (mask >= self.num_classes) & (mask != IGNORE_INDEX)
        if invalid.any() or (mask < 0).any():
            bad = np.unique(mask[invalid | (mask < 0)])[:10].tolist()
            raise BadItemError(
                f"{type(self).__name__} item {self.ids[index]!r}: mask values {bad} are not class "
                f"indices (0..{self.num_classes - 1}) or 255 (ignore); check the mask files or the "
                f"dataset's value_map (--skip-bad skips such images)"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} images, {self.num_classes} classes, "
            f"background={self.has_background}, masks={self.has_masks}, tags={self.has_tags})"
        )


class FilePairDataset(SegmentationDataset):
    """A dataset whose item ``i`` is one image file and one label file mapped through a lookup table.

    The readers of Cityscapes, ADE20K, COCO-Stuff, PASCAL-Context and CamVid differ only in where their
    files are and how raw label values become labels; they find the files and build the table, this
    class reads them. Tags are the classes present in the mapped mask.

    Args:
        ids: image ids.
        images: image path of each id.
        masks: label file of each id (read with :meth:`read_raw_mask`).
        lookup: raw value -> label table from :func:`label_lookup`; ``None``: raw values are labels.
        class_names, has_background, palette, transform: as in :class:`SegmentationDataset`.
    """

    def __init__(
        self,
        ids: Sequence[str],
        images: Sequence[Path],
        masks: Sequence[Path],
        lookup: np.ndarray | None,
        class_names: Sequence[str],
        *,
        has_background: bool,
        palette: np.ndarray,
        transform: Callable[[Item], Item] | None = None,
    ) -> None:
        if not len(ids) == len(images) == len(masks):
            raise DataError(f"{len(ids)} ids, {len(images)} images and {len(masks)} masks: expected one of each per id")
        super().__init__(
            ids, class_names, has_background=has_background, has_masks=True, palette=palette, transform=transform
        )
        self.images = list(images)
        self.masks = list(masks)
        self.lookup = lookup

    def read_raw_mask(self, path: Path) -> np.ndarray:
        """``(H, W)`` int64 raw values of a label file (here a palette or greyscale PNG)."""
        return load_label_png(path)

    def load_image(self, index: int) -> np.ndarray:
        return read_image(self.images[index])

    def load_mask(self, index: int) -> np.ndarray:
        raw = self.read_raw_mask(self.masks[index])
        return raw if self.lookup is None else apply_lookup(self.lookup, raw)
