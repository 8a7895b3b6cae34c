"""MS COCO (Lin et al., ECCV 2014, arXiv:1405.0312) as a semantic segmentation set, the WSSS way.

Layout (the official one)::

    root/
      annotations/instances_<split>.json     e.g. instances_train2014.json, instances_val2017.json
      <split>/<file_name>                    file_name from the JSON: COCO_train2014_<12 digits>.jpg
                                             (2014) or <12 digits>.jpg (2017)

Classes: 81, 0 = background, then COCO's 80 categories (sparse ids 1..90) renumbered 1..80 in
ascending id order, named as in the JSON; this is the convention of the WSSS COCO benchmarks
(e.g. IRN's and RCA's COCO 2014 experiments).

Semantic masks (:func:`semantic_mask`) are rasterised from the instance annotations with
pycocotools, on the fly or once by ``scripts/prepare_coco.py`` into label PNGs (option ``masks``).
Overlap order: instances are painted in decreasing order of their JSON ``area`` (ties: increasing
annotation id), so a smaller object stays on top of a larger one it overlaps; crowd regions become
255 (ignore) where no non-crowd instance covers them. Image-level tags are the categories of the
non-crowd instances, read from the JSON (no mask needed).

Split conventions (option ``skip_empty``): all images of the split (``False``), or, as the WSSS
papers train and evaluate, only the images with at least one annotation (``True``: 82,081 of
82,783 train2014 and 40,137 of 40,504 val2014 images).
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
from rca.errors import DataError
from rca.io import load_label_png


def _resolve_split(root: Path, split: str, year: int | None) -> str:
    """``train2014``-style split name from ``split`` (with or without year) and ``year``."""
    if re.fullmatch(r"[a-z]+\d{4}", split):
        if year is not None and not split.endswith(str(year)):
            raise DataError(f"COCO split {split!r} contradicts the option year={year}; drop one of them")
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
    raise DataError(f"COCO split {split!r} is ambiguous ({', '.join(found)}): set the dataset option `year`")


def _segmentation_rle(segmentation: Any, height: int, width: int) -> dict:
    """One compressed RLE from any COCO segmentation (polygons, uncompressed or compressed RLE)."""
    if isinstance(segmentation, list):  # polygons: one RLE per polygon, merged
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):  # uncompressed RLE (crowd regions)
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


Instance = tuple[float, int, int, bool, Any]  # (area, annotation id, label 1..80, iscrowd, segmentation)


def semantic_mask(instances: list[Instance], height: int, width: int) -> np.ndarray:
    """The 81-class label map of one image from its instances.

    Args:
        instances: ``(area, annotation id, label, iscrowd, segmentation)`` per annotation, labels 1..80,
            segmentations in any COCO encoding; any order.
        height, width: image size in pixels.

    Returns:
        ``(height, width)`` int64: 0 = background, 1..80, 255 = crowd not covered by another instance.
        Instances are painted by decreasing area (ties: increasing annotation id), so smaller ones end
        on top.
    """
    mask = np.zeros((height, width), dtype=np.int64)
    covered = np.zeros((height, width), dtype=bool)  # by a non-crowd instance
    crowd = np.zeros((height, width), dtype=bool)
    for _, _, label, iscrowd, segmentation in sorted(instances, key=lambda inst: (-inst[0], inst[1])):
        region = mask_utils.decode(_segmentation_rle(segmentation, height, width)).astype(bool)
        if iscrowd:
            crowd |= region
        else:
            mask[region] = label
            covered |= region
    mask[crowd & ~covered] = IGNORE_INDEX
    return mask


def load_instances(annotation_file: Path) -> tuple[list[dict], list[dict], dict[int, list[Instance]]]:
    """Categories (by id), images (by file name) and each image's instances from an ``instances_*.json``.

    Labels are the category's rank in id order plus one (COCO's sparse ids 1..90 -> 1..80).
    """
    with open(annotation_file) as f:
        coco = json.load(f)
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: label for label, c in enumerate(categories, start=1)}
    instances = defaultdict(list)
    for ann in coco["annotations"]:
        instances[ann["image_id"]].append(
            (ann["area"], ann["id"], label_of[ann["category_id"]], bool(ann["iscrowd"]), ann["segmentation"])
        )
    return categories, sorted(coco["images"], key=lambda im: im["file_name"]), instances


class COCOSegmentation(SegmentationDataset):
    """COCO instances turned into 81-class semantic masks (0 = background), tags from the JSON.

    Args:
        root: folder with ``annotations/`` and the image folders.
        split: ``train2014``, ``val2017`` ...; or ``train`` / ``val`` with ``year`` (inferred when only
            one year's annotation file is present).
        transform: optional callable applied to each item dict.
        year: COCO release year (2014 or 2017) when ``split`` has none.
        skip_empty: keep only the images with at least one annotation (the WSSS convention).
        masks: folder under ``root`` holding ``<split>/<file stem>.png`` label PNGs written by
            ``scripts/prepare_coco.py``; ``None``: rasterise each mask from the JSON when read.

    Raises:
        FileNotFoundError: missing annotation file, image folder or mask folder.
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
        masks: str | None = None,
    ) -> None:
        self.root = require_path(Path(root).expanduser(), "COCO root", "Set `data.root` to the COCO folder.")
        self.split = _resolve_split(self.root, split, year)
        hint = "Set `data.root` to the folder holding annotations/ and the image folders."
        annotation_file = self.root / "annotations" / f"instances_{self.split}.json"
        require_path(annotation_file, "COCO annotation file", hint)
        self.image_dir = require_path(self.root / self.split, "COCO image folder", hint)
        self.mask_dir = None
        if masks is not None:
            self.mask_dir = require_path(
                self.root / masks / self.split, "COCO label PNG folder",
                f"Write it with `python scripts/prepare_coco.py --root {self.root} --split {self.split}`, "
                f"or drop the dataset option `masks` to rasterise masks on the fly.",
            )  # fmt: skip
        categories, images, instances = load_instances(annotation_file)
        self._records = []  # (file name, height, width, instances)
        tags = []
        for image in images:
            image_instances = instances.get(image["id"], [])
            if skip_empty and not image_instances:
                continue
            image_tags = np.zeros(len(categories), dtype=np.float32)
            for _, _, label, iscrowd, _ in image_instances:
                if not iscrowd:
                    image_tags[label - 1] = 1.0
            self._records.append((image["file_name"], image["height"], image["width"], image_instances))
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
        if self.mask_dir is not None:
            return load_label_png(self.mask_dir / f"{self.ids[index]}.png")
        _, height, width, instances = self._records[index]
        return semantic_mask(instances, height, width)
