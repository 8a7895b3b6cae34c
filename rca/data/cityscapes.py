"""Cityscapes (Cordts et al., CVPR 2016), fine annotations, the 19-class benchmark.

Layout (the official ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` unpacked into
one folder)::

    root/
      leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
      gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Splits ``train`` (2,975), ``val`` (500), ``test`` (1,525; its public masks are all "unlabeled", so
every pixel is ignored). Masks hold the 34 ``labelIds`` of cityscapesScripts' ``labels.py``; the
19 evaluated classes get their ``trainId`` 0..18 on the fly, every other id (void, license plate,
the rarely annotated caravan/trailer/...) becomes 255. No preparation step is needed. There is no
background class.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from rca.data.base import FilePairDataset, Item, glob_files, label_lookup, require_path
from rca.data.palette import palette_from_colors

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
# labelId of each trainId 0..18 (cityscapesScripts helpers/labels.py)
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
# The official colour of each trainId (helpers/labels.py)
CITYSCAPES_COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip
IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"


class Cityscapes(FilePairDataset):
    """Cityscapes fine: 19 classes (train ids), no background, other label ids ignored.

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val`` or ``test``.
        transform: optional callable applied to each item dict.

    Item ids are ``<city>_<seq>_<frame>`` (e.g. ``aachen_000000_000019``), sorted.

    Raises:
        FileNotFoundError: missing ``leftImg8bit/<split>`` or ``gtFine/<split>``, or a split folder
            without images.
    """

    def __init__(self, root: str | os.PathLike, split: str, transform: Callable[[Item], Item] | None = None) -> None:
        root = Path(root).expanduser()
        hint = (
            "Set `data.root` to the folder where leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip "
            "(www.cityscapes-dataset.com) were unpacked; no preparation script is needed."
        )
        image_dir = require_path(root / "leftImg8bit" / split, "Cityscapes image folder", hint)
        mask_dir = require_path(root / "gtFine" / split, "Cityscapes fine annotation folder", hint)
        images = glob_files(image_dir, f"*/*{IMAGE_SUFFIX}", hint)
        ids = [image.name[: -len(IMAGE_SUFFIX)] for image in images]
        masks = [mask_dir / image.parent.name / f"{image_id}{MASK_SUFFIX}" for image, image_id in zip(images, ids)]
        self.root = root
        super().__init__(
            ids, images, masks, label_lookup({label_id: k for k, label_id in enumerate(CITYSCAPES_LABEL_IDS)}),
            CITYSCAPES_CLASSES, has_background=False, palette=palette_from_colors(CITYSCAPES_COLORS),
            transform=transform,
        )  # fmt: skip
