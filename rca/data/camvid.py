"""CamVid (Brostow et al., PRL 2009) in the SegNet release (Badrinarayanan et al., TPAMI 2017, arXiv:1511.00561).

Layout of the SegNet release (480x360 frames)::

    root/
      train/ trainannot/ val/ valannot/ test/ testannot/
      train.txt, val.txt, test.txt   lines "/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png"

The list paths are made relative to ``root`` by cutting everything up to and including ``CamVid/``.
Masks are greyscale PNGs: 0..10 = the 11 classes below, 11 = unlabelled (read as 255 = ignore).
There is no background class: every labelled pixel is an object or stuff class.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rca.data.base import Item, SegmentationDataset, read_id_list, read_image, require_path
from rca.data.palette import IGNORE_INDEX, palette_from_colors
from rca.io import load_label_png

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
# The original CamVid colour of each class (Brostow et al.'s label colours).
CAMVID_COLORS = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (0, 0, 192), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip


def _relative(path: str) -> str:
    """``/SegNet/CamVid/train/x.png`` -> ``train/x.png`` (paths without ``CamVid/`` are kept)."""
    return path.split("CamVid/", 1)[-1].lstrip("/")


class CamVid(SegmentationDataset):
    """CamVid, SegNet version: 11 classes, no background, unlabelled pixels ignored.

    Args:
        root: folder with the split folders and ``<split>.txt``.
        split: ``train``, ``val`` or ``test``.
        transform: optional callable applied to each item dict.

    Raises:
        FileNotFoundError: missing root or split file.
        ValueError: a split-file line without an image and a mask path.
    """

    def __init__(self, root: str | os.PathLike, split: str, transform: Callable[[Item], Item] | None = None) -> None:
        hint = "Set `data.root` to the SegNet CamVid folder (with train/, trainannot/, train.txt ...)."
        self.root = require_path(Path(root).expanduser(), "CamVid root", hint)
        split_file = self.root / f"{split}.txt"
        self._files = []  # (image path, mask path)
        for line in read_id_list(split_file, hint):
            paths = line.split()
            if len(paths) != 2:
                raise ValueError(f"{split_file}: expected '<image path> <mask path>' per line, got {line!r}")
            self._files.append((self.root / _relative(paths[0]), self.root / _relative(paths[1])))
        super().__init__(
            [image.stem for image, _ in self._files], CAMVID_CLASSES, has_background=False, has_masks=True,
            palette=palette_from_colors(CAMVID_COLORS), transform=transform,
        )
        self._lookup = np.full(256, IGNORE_INDEX, dtype=np.int64)  # raw value -> label: 0..10 kept
        self._lookup[: len(CAMVID_CLASSES)] = np.arange(len(CAMVID_CLASSES))

    def load_image(self, index: int) -> np.ndarray:
        return read_image(self._files[index][0])

    def load_mask(self, index: int) -> np.ndarray:
        return self._lookup[load_label_png(self._files[index][1])]
