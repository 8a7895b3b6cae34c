"""A generic segmentation set on disk: an image folder, a mask folder, a class file, split lists.

Layout (every name is an option)::

    root/
      images/<id>.png        (or .jpg ...)
      labels/<id>.png        greyscale or palette PNG of raw label values
      classes.txt            "<value> <name>" or "<name>" per line (then value = line number)
      train.txt, val.txt     one id per line

Raw mask values become labels through ``value_map`` (raw value -> label; raw values not in it ->
255 = ignore). Without ``value_map`` the raw values are the labels. The class names are those of
``classes.txt`` after mapping, ordered by label; a raw value mapped to 255 drops its class. MSRC-v2,
for instance (0 = void, 1..23 = classes, no background), is read with
``value_map={0: 255, 1: 0, 2: 1, ..., 23: 22}`` and ``has_background=False``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from rca.data.base import (
    Item, SegmentationDataset, apply_lookup, label_lookup, read_id_list, read_image, require_path,
)  # fmt: skip
from rca.data.palette import IGNORE_INDEX, make_palette
from rca.errors import BadItemError, DataError
from rca.io import load_label_png

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def read_class_file(path: Path) -> dict[int, str]:
    """``{raw value: name}`` from lines ``"<value> <name>"`` or ``"<name>"`` (value = line index)."""
    classes: dict[int, str] = {}
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    for number, line in enumerate(lines):
        first, _, rest = line.partition(" ")
        value, name = (int(first), rest.strip()) if first.isdigit() and rest.strip() else (number, line)
        if value in classes:
            raise DataError(f"{path}: raw value {value} is listed twice")
        classes[value] = name
    return classes


def _label_names(classes: dict[int, str], value_map: dict[int, int] | None, path: Path) -> list[str]:
    """Class names indexed by label, from the raw classes and the value map."""
    names: dict[int, str] = {}
    for value, name in classes.items():
        label = value if value_map is None else value_map.get(value, IGNORE_INDEX)
        if label == IGNORE_INDEX:
            continue
        if names.setdefault(label, name) != name:
            raise DataError(f"{path}: label {label} would be both {names[label]!r} and {name!r}; check `value_map`")
    if sorted(names) != list(range(len(names))):
        raise DataError(
            f"{path}: labels after `value_map` must be 0..K-1 without gaps, got {sorted(names)}; "
            f"fix the class file or `value_map`"
        )
    return [names[label] for label in range(len(names))]


class FolderSegmentation(SegmentationDataset):
    """Images and label PNGs in two folders, classes from a text file, ids from split files.

    Args:
        root: dataset folder.
        split: split name; the ids are read from ``split_file.format(split=split)``.
        transform: optional callable applied to each item dict.
        image_dir, mask_dir: folders under ``root`` (``images``, ``labels``).
        class_file: class file under ``root`` (``classes.txt``).
        split_file: split list under ``split_dir``, ``{split}`` is replaced (``{split}.txt``).
        split_dir: folder of the split lists; ``None`` (default) is ``root``. A relative path is taken
            from the working directory, as ``data.root`` is (e.g. the project's own
            ``data/splits/msrc_v2``).
        image_ext: extension tried first for images; ``.png``, ``.jpg``, ``.jpeg``, ``.bmp`` are tried
            after it.
        mask_ext: extension of the mask files (``.png``).
        value_map: raw mask value -> label (0..K-1 or 255); raw values not in it become 255.
            ``None``: raw values are the labels. Keys may be strings of integers (from YAML/CLI).
        has_background: whether label 0 is a background class (then it gets no tag).

    Raises:
        FileNotFoundError: missing root, folder, class file or split file.
        ValueError: bad class file or ``value_map`` (duplicate values, gaps in the labels).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        transform: Callable[[Item], Item] | None = None,
        *,
        image_dir: str = "images",
        mask_dir: str = "labels",
        class_file: str = "classes.txt",
        split_file: str = "{split}.txt",
        split_dir: str | os.PathLike | None = None,
        image_ext: str = ".png",
        mask_ext: str = ".png",
        value_map: Mapping[int | str, int] | None = None,
        has_background: bool = False,
    ) -> None:
        hint = "Set `data.root` (and the folder dataset's options) to where the data is."
        self.root = require_path(Path(root).expanduser(), "dataset root", hint)
        self.image_dir = require_path(self.root / image_dir, "image folder", hint)
        self.mask_dir = require_path(self.root / mask_dir, "mask folder", hint)
        self.image_exts = (image_ext,) + tuple(ext for ext in IMAGE_EXTENSIONS if ext != image_ext)
        self.mask_ext = mask_ext
        class_path = require_path(self.root / class_file, "class file", hint)
        lists = self.root if split_dir is None else require_path(Path(split_dir).expanduser(), "split folder", hint)
        ids = read_id_list(lists / split_file.format(split=split), hint)

        self.value_map = None if value_map is None else {int(k): int(v) for k, v in value_map.items()}
        if self.value_map is not None:
            bad = {k: v for k, v in self.value_map.items() if k < 0 or not 0 <= v <= IGNORE_INDEX}
            if bad:
                raise DataError(f"value_map entries {bad} are invalid: keys must be >= 0, labels in 0..255")
            self._lookup = label_lookup(self.value_map)
        class_names = _label_names(read_class_file(class_path), self.value_map, class_path)
        super().__init__(
            ids, class_names, has_background=has_background, has_masks=True,
            palette=make_palette(len(class_names)), transform=transform,
        )

    def load_image(self, index: int) -> np.ndarray:
        stem = self.image_dir / self.ids[index]
        for ext in self.image_exts:
            path = stem.with_name(stem.name + ext)
            if path.is_file():
                return read_image(path)
        raise BadItemError(f"no image {stem}{{{','.join(self.image_exts)}}}; check `image_dir`/`image_ext` or leave "
                           f"{self.ids[index]!r} out of the split (--skip-bad skips such images)")

    def load_mask(self, index: int) -> np.ndarray:
        raw = load_label_png(self.mask_dir / f"{self.ids[index]}{self.mask_ext}")
        if self.value_map is None:
            return raw
        return apply_lookup(self._lookup, raw)
