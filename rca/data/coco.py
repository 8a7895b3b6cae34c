"""MS COCO (Lin et al., ECCV 2014, arXiv:1405.0312) as a semantic segmentation set, the WSSS way.

Layout (the official one)::

    root/
      annotations/instances_<split>.json     e.g. instances_train2014.json, instances_val2017.json
      <split>/<file_name>                    file_name from the JSON: COCO_train2014_<12 digits>.jpg
                                             (2014) or <12 digits>.jpg (2017)

Classes: 81, 0 = background, then COCO's 80 categories (sparse ids 1..90) renumbered 1..80 in
ascending id order, named as in the JSON; this is the convention of the WSSS COCO benchmarks
(e.g. IRN's and RCA's COCO 2014 experiments).

Semantic masks are rasterised on the fly from the instance annotations with pycocotools: instances
are painted in decreasing area order so smaller objects stay on top of larger ones, and crowd
regions become 255 (ignore) where no non-crowd instance covers them. Image-level tags are the
categories of the non-crowd instances, read from the JSON (no mask needed).
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from rca.data.base import Item, SegmentationDataset, read_image, require_path
from rca.data.palette import IGNORE_INDEX, make_palette


def _resolve_split(root: Path, split: str, year: int | None) -> str:
    """``train2014``-style split name from ``split`` (with or without year) and ``year``."""
    if re.fullmatch(r"[a-z]+\d{4}", split):
        if year is not None and not split.endswith(str(year)):
            raise ValueError(f"COCO split {split!r} contradicts the option year={year}; drop one of them")
        return split
    if year is not None:
        return f"{split}{year}"
    annotation_dir = require_path(root / "annotations", "COCO annotation folder", "Set `data.root` to the COCO folder.")
    pattern = f"instances_{split}[0-9][0-9][0-9][0-9].json"
    found = sorted(path.stem[len("instances_"):] for path in annotation_dir.glob(pattern))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(
            f"no {annotation_dir}/instances_{split}<year>.json; use a split such as 'train2014' or "
            f"'val2017' that has an annotation file, or set `data.root` to the COCO folder"
        )
    raise ValueError(f"COCO split {split!r} is ambiguous ({', '.join(found)}): set the dataset option `year`")


def _segmentation_rle(segmentation: Any, height: int, width: int) -> dict:
    """One compressed RLE from any COCO segmentation (polygons, uncompressed or compressed RLE)."""
    if isinstance(segmentation, list):  # polygons: one RLE per polygon, merged
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):  # uncompressed RLE (crowd regions)
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


class COCOSegmentation(SegmentationDataset):
    """COCO instances turned into 81-class semantic masks (0 = background), tags from the JSON.

    Args:
        root: folder with ``annotations/`` and the image folders.
        split: ``train2014``, ``val2017`` ...; or ``train`` / ``val`` with ``year`` (inferred when only
            one year's annotation file is present).
        transform: optional callable applied to each item dict.
        year: COCO release year (2014 or 2017) when ``split`` has none.
        skip_empty: drop images without any non-crowd instance (their tags are all zero).

    Raises:
        FileNotFoundError: missing annotation file or image folder.
        ValueError: ``split`` and ``year`` disagree, or the year cannot be inferred.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        transform: Callable[[Item], Item] | None = None,
        *,
        year: int | None = None,
        skip_empty: bool = False,
    ) -> None:
        self.root = require_path(Path(root).expanduser(), "COCO root", "Set `data.root` to the COCO folder.")
        self.split = _resolve_split(self.root, split, year)
        hint = "Set `data.root` to the folder holding annotations/ and the image folders."
        annotation_file = self.root / "annotations" / f"instances_{self.split}.json"
        require_path(annotation_file, "COCO annotation file", hint)
        self.image_dir = require_path(self.root / self.split, "COCO image folder", hint)
        with open(annotation_file) as f:
            coco = json.load(f)

        categories = sorted(coco["categories"], key=lambda c: c["id"])
        label_of = {c["id"]: label for label, c in enumerate(categories, start=1)}
        annotations = defaultdict(list)  # image id -> [(area, label, iscrowd, segmentation)]
        for ann in coco["annotations"]:
            annotations[ann["image_id"]].append(
                (ann["area"], label_of[ann["category_id"]], bool(ann["iscrowd"]), ann["segmentation"])
            )
        self._records = []  # (file name, height, width, instances by decreasing area)
        tags = []
        for image in sorted(coco["images"], key=lambda im: im["file_name"]):
            instances = sorted(annotations.get(image["id"], []), key=lambda inst: -inst[0])
            image_tags = np.zeros(len(categories), dtype=np.float32)
            for _, label, iscrowd, _ in instances:
                if not iscrowd:
                    image_tags[label - 1] = 1.0
            if skip_empty and not image_tags.any():
                continue
            self._records.append((image["file_name"], image["height"], image["width"], instances))
            tags.append(image_tags)

        super().__init__(
            [Path(record[0]).stem for record in self._records],
            ["background"] + [c["name"] for c in categories],
            has_background=True, has_masks=True, palette=make_palette(len(categories) + 1), transform=transform,
        )
        self.category_ids = [c["id"] for c in categories]  # COCO category id of label k + 1
        self._tags = np.stack(tags) if tags else np.zeros((0, len(categories)), dtype=np.float32)

    def load_image(self, index: int) -> np.ndarray:
        return read_image(self.image_dir / self._records[index][0])

    def load_mask(self, index: int) -> np.ndarray:
        _, height, width, instances = self._records[index]
        mask = np.zeros((height, width), dtype=np.int64)
        covered = np.zeros((height, width), dtype=bool)  # by a non-crowd instance
        crowd = np.zeros((height, width), dtype=bool)
        for _, label, iscrowd, segmentation in instances:  # largest first: smaller ones end on top
            region = mask_utils.decode(_segmentation_rle(segmentation, height, width)).astype(bool)
            if iscrowd:
                crowd |= region
            else:
                mask[region] = label
                covered |= region
        mask[crowd & ~covered] = IGNORE_INDEX
        return mask
