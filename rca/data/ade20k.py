"""ADE20K scene parsing, the 150-class SceneParsing benchmark (Zhou et al., CVPR 2017, arXiv:1608.05442).

Layout (the official ``ADEChallengeData2016.zip`` unpacked)::

    ADEChallengeData2016/
      images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
      annotations/{training,validation}/ADE_{train,val}_<8 digits>.png

Splits ``train`` (20,210 images) and ``val`` (2,000); ``training`` / ``validation`` are accepted too.
Annotations are greyscale PNGs: 0 = "other objects" (not evaluated) and 1..150 = the classes below.
They are read as 0 -> 255 (ignore) and ``k -> k - 1`` (the ``reduce_zero_label`` convention of the
benchmark's toolkit and mmsegmentation). No background class; class names and order are those of
the benchmark's ``objectInfo150``. Label PNGs written by the pipeline use the VOC colour map
(:func:`rca.data.palette.make_palette`), not the benchmark's colours.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from rca.data.base import FilePairDataset, Item, glob_files, label_lookup, require_path
from rca.data.palette import make_palette
from rca.errors import DataError

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)  # fmt: skip
SPLIT_FOLDERS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


class ADE20K(FilePairDataset):
    """ADE20K SceneParsing: 150 classes, no background, "other objects" (0) ignored.

    Args:
        root: the ``ADEChallengeData2016`` folder.
        split: ``train`` / ``training`` or ``val`` / ``validation``.
        transform: optional callable applied to each item dict.

    Item ids are the file stems (``ADE_val_00000001``), sorted.

    Raises:
        ValueError: unknown split.
        FileNotFoundError: missing image or annotation folder, or no images in it.
    """

    def __init__(self, root: str | os.PathLike, split: str, transform: Callable[[Item], Item] | None = None) -> None:
        if split not in SPLIT_FOLDERS:
            raise DataError(f"ADE20K split {split!r} is unknown; use one of {', '.join(SPLIT_FOLDERS)}")
        root = Path(root).expanduser()
        folder = SPLIT_FOLDERS[split]
        hint = (
            "Set `data.root` to the ADEChallengeData2016 folder of ADEChallengeData2016.zip "
            "(sceneparsing.csail.mit.edu); no preparation script is needed."
        )
        image_dir = require_path(root / "images" / folder, "ADE20K image folder", hint)
        mask_dir = require_path(root / "annotations" / folder, "ADE20K annotation folder", hint)
        images = glob_files(image_dir, "*.jpg", hint)
        self.root = root
        super().__init__(
            [image.stem for image in images], images, [mask_dir / f"{image.stem}.png" for image in images],
            label_lookup({raw: raw - 1 for raw in range(1, len(ADE20K_CLASSES) + 1)}),  # 0 -> 255
            ADE20K_CLASSES, has_background=False, palette=make_palette(len(ADE20K_CLASSES)), transform=transform,
        )  # fmt: skip
