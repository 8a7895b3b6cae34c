"""PASCAL-Context (Mottaghi et al., CVPR 2014): VOC 2010 images, the 59 most frequent classes.

Layout (mmsegmentation's; ``SegmentationClassContext`` and the lists are written by
``scripts/prepare_pascal_context.py`` from the official ``trainval.tar.gz``)::

    VOCdevkit/VOC2010/
      JPEGImages/<id>.jpg
      SegmentationClassContext/<id>.png       greyscale: 0 = background, 1..59 = the classes below
      ImageSets/SegmentationContext/{train,val}.txt     4,998 / 5,105 ids

The official labels (``trainval/<id>.mat``, field ``LabelMap``) index 459 classes, alphabetically
(``labels.txt``: 1 = accordion, 2 = aeroplane, ...). The benchmark keeps the 59 listed in
:data:`CONTEXT59_IDS` (the ids of ``59_labels.txt`` and of the Detail API's mapping) in id order,
which is alphabetical, and merges everything else, unlabelled pixels included, into background.

Two conventions, chosen with ``num_classes``:

- ``59`` (default, the usual benchmark): background is ignored, ``k -> k - 1``; no background class.
- ``60``: background is class 0 and scored like the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from rca.data.base import FilePairDataset, Item, label_lookup, read_id_list, require_path
from rca.data.palette import make_palette
from rca.errors import DataError

CONTEXT59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
    "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog",
    "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
    "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
)  # fmt: skip
# Official 459-class id of each of the 59 classes above (same order).
CONTEXT59_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115, 144, 158,
    159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349, 354, 355, 360,
    366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)  # fmt: skip
PREPARE_HINT = (
    "Set `data.root` to VOCdevkit/VOC2010 and run scripts/prepare_pascal_context.py on the official "
    "trainval.tar.gz (cs.stanford.edu/~roozbeh/pascal-context) to write SegmentationClassContext/ and "
    "ImageSets/SegmentationContext/."
)


def resolve_root(root: Path, hint: str) -> Path:
    """The VOC2010 folder: ``root`` or ``root/VOCdevkit/VOC2010``, whichever has ``JPEGImages/``.

    Raises:
        FileNotFoundError: neither has, with ``hint``.
    """
    for candidate in (root, root / "VOCdevkit" / "VOC2010"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise FileNotFoundError(
        f"VOC 2010 not found under {root}: expected {root}/JPEGImages or {root}/VOCdevkit/VOC2010/JPEGImages. {hint}"
    )


class PascalContext(FilePairDataset):
    """PASCAL-Context: 59 classes (background ignored) or 60 (background = class 0).

    Args:
        root: the ``VOC2010`` folder, or a folder holding ``VOCdevkit/VOC2010``.
        split: ``train`` or ``val`` (a list in ``ImageSets/SegmentationContext``).
        transform: optional callable applied to each item dict.
        num_classes: ``59`` or ``60``.

    Raises:
        ValueError: ``num_classes`` not 59 or 60.
        FileNotFoundError: missing folders or split list (the message names the preparation script).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        transform: Callable[[Item], Item] | None = None,
        *,
        num_classes: int = 59,
    ) -> None:
        if num_classes not in (59, 60):
            raise DataError(f"PASCAL-Context num_classes must be 59 or 60 (data.options.num_classes), "
                            f"got {num_classes}")
        root = resolve_root(Path(root).expanduser(), PREPARE_HINT)
        mask_dir = require_path(root / "SegmentationClassContext", "PASCAL-Context label folder", PREPARE_HINT)
        ids = read_id_list(root / "ImageSets" / "SegmentationContext" / f"{split}.txt", PREPARE_HINT)
        self.root = root
        if num_classes == 60:
            lookup, names, background = None, ("background", *CONTEXT59_CLASSES), True
        else:
            lookup = label_lookup({value: value - 1 for value in range(1, len(CONTEXT59_CLASSES) + 1)})  # 0 -> 255
            names, background = CONTEXT59_CLASSES, False
        super().__init__(
            ids, [root / "JPEGImages" / f"{image_id}.jpg" for image_id in ids],
            [mask_dir / f"{image_id}.png" for image_id in ids], lookup, names, has_background=background,
            palette=make_palette(len(names)), transform=transform,
        )  # fmt: skip
