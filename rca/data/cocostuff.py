"""COCO-Stuff (Caesar et al., CVPR 2018, arXiv:1612.03716): 80 thing + 91 stuff classes = 171.

Two releases, chosen with the option ``version``:

``164k`` (default; the official ``train2017.zip``, ``val2017.zip`` and ``stuffthingmaps_trainval2017.zip``)::

    root/
      images/{train2017,val2017}/<12 digits>.jpg
      annotations/{train2017,val2017}/<12 digits>.png   greyscale: 0..181 = class id - 1, 255 = unlabeled

  Splits ``train`` (118k) / ``val`` (5k), also spelt ``train2017`` / ``val2017``.

``10k`` (``cocostuff-10k-v1.1.zip``)::

    root/
      images/COCO_train2014_<12 digits>.jpg
      annotations/COCO_train2014_<12 digits>.mat        field S: 0 = unlabeled, 1..182 = class id
      imageLists/{train,test,all}.txt                   ids without extension

  Splits ``train`` (9,000) / ``test`` (1,000) / ``all``.

Of the 182 ids, 11 are thing ids COCO never annotated (street sign, hat, shoe, eye glasses, plate,
mirror, window, desk, door, blender, hair brush: ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91);
the remaining 171 are renumbered 0..170 in id order, as the benchmark and mmsegmentation's
conversion scripts do, and the unused ids become 255. No background class.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.io

from rca.data.base import FilePairDataset, Item, glob_files, label_lookup, read_id_list, require_path
from rca.data.palette import make_palette
from rca.errors import DataError
from rca.io import reading

COCOSTUFF_CLASSES = (
    # 80 things (COCO's categories in id order)
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
    # 91 stuff classes (ids 92..182)
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard",
    "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain",
    "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other",
    "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin",
    "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other",
    "skyscraper", "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel",
    "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip
UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)  # 1-based ids without annotations
# 0-based stuffthingmaps value -> label 0..170
USED_VALUES = tuple(value for value in range(182) if value + 1 not in UNUSED_IDS)
SPLITS_164K = {"train": "train2017", "val": "val2017", "train2017": "train2017", "val2017": "val2017"}


class COCOStuff(FilePairDataset):
    """COCO-Stuff 164k or 10k: 171 classes, no background, unlabeled and unused ids ignored.

    Args:
        root: the dataset folder (layouts in the module docstring).
        split: ``train`` / ``val`` (164k; also ``train2017`` / ``val2017``) or ``train`` / ``test`` /
            ``all`` (10k).
        transform: optional callable applied to each item dict.
        version: ``"164k"`` or ``"10k"``.

    Raises:
        ValueError: unknown version or split.
        FileNotFoundError: missing folders or split list (the message names the expected path).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        transform: Callable[[Item], Item] | None = None,
        *,
        version: str = "164k",
    ) -> None:
        root = Path(root).expanduser()
        if version == "164k":
            if split not in SPLITS_164K:
                raise DataError(f"COCO-Stuff 164k split {split!r} is unknown; use one of {', '.join(SPLITS_164K)}")
            hint = (
                "Set `data.root` to the folder with images/{train2017,val2017} (cocodataset.org) and "
                "annotations/{train2017,val2017} (stuffthingmaps_trainval2017.zip); no preparation script is needed."
            )
            image_dir = require_path(root / "images" / SPLITS_164K[split], "COCO-Stuff image folder", hint)
            mask_dir = require_path(root / "annotations" / SPLITS_164K[split], "COCO-Stuff annotation folder", hint)
            images = glob_files(image_dir, "*.jpg", hint)
            ids = [image.stem for image in images]
            masks = [mask_dir / f"{image_id}.png" for image_id in ids]
        elif version == "10k":
            hint = (
                "Set `data.root` to the unpacked cocostuff-10k-v1.1.zip (images/, annotations/, imageLists/); "
                "no preparation script is needed."
            )
            require_path(root / "images", "COCO-Stuff 10k image folder", hint)
            ids = read_id_list(root / "imageLists" / f"{split}.txt", hint)
            images = [root / "images" / f"{image_id}.jpg" for image_id in ids]
            masks = [root / "annotations" / f"{image_id}.mat" for image_id in ids]
        else:
            raise DataError(f"COCO-Stuff version {version!r} is unknown; use '164k' or '10k' (data.options.version)")
        self.root = root
        self.version = version
        super().__init__(
            ids, images, masks, label_lookup({value: label for label, value in enumerate(USED_VALUES)}),
            COCOSTUFF_CLASSES, has_background=False, palette=make_palette(len(COCOSTUFF_CLASSES)),
            transform=transform,
        )  # fmt: skip

    def read_raw_mask(self, path: Path) -> np.ndarray:
        """Raw values in the 164k encoding (0..181, 255); 10k's ``.mat`` ``S`` is shifted down by one."""
        if path.suffix == ".mat":
            with reading(path, "mask"):
                return scipy.io.loadmat(path)["S"].astype(np.int64) - 1  # 0 (unlabeled) -> -1 -> 255
        return super().read_raw_mask(path)
