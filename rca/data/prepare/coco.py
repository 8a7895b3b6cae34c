"""COCO: 81-class label PNGs and image-level labels from the official instance annotations.

Input: ``root/annotations/instances_<split>.json`` (2014 or 2017 release; image file names from the
JSON, ``COCO_train2014_<12 digits>.jpg`` or ``<12 digits>.jpg``). Outputs under ``root``:

- ``SegmentationClass/<split>/<file stem>.png``: the masks of :func:`rca.data.coco.semantic_mask`
  (0 = background, 1..80 = the categories in id order, 255 = crowd not covered by an instance;
  instances painted by decreasing area, ties by annotation id), for every image of the JSON.
  The reader uses them with the dataset option ``masks: SegmentationClass``.
- ``cls_labels_<split>.npy``: ``{file stem: (80,) float32 0/1}``, the categories of the non-crowd
  instances of every image (all zero for an image without one).

Both split conventions stay available from the same files: all images, or (dataset option
``skip_empty: true``) the images with at least one annotation, the WSSS convention.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rca.data.base import require_path
from rca.data.coco import Instance, load_instances, semantic_mask
from rca.data.palette import make_palette
from rca.data.prepare import write_label_pngs
from rca.io import save_npy

MASK_FOLDER = "SegmentationClass"


def _convert(source: tuple[list[Instance], int, int]) -> np.ndarray:
    return semantic_mask(*source)


def prepare_coco(
    root: str | os.PathLike, split: str, *, overwrite: bool = False, workers: int = 1
) -> dict[str, int]:
    """Write ``SegmentationClass/<split>/*.png`` and ``cls_labels_<split>.npy`` for one COCO split.

    Args:
        root: folder holding ``annotations/instances_<split>.json``.
        split: ``train2014``, ``val2014``, ``train2017`` or ``val2017`` (the JSON's name).
        overwrite: rewrite existing PNGs (the label file is always rewritten).
        workers: processes rasterising masks.

    Returns:
        Counts: ``images``, ``with_annotations`` (the WSSS split size), ``written`` (PNGs written now).

    Raises:
        FileNotFoundError: no annotation file (the message names the expected path).
    """
    root = Path(root).expanduser()
    annotation_file = require_path(
        root / "annotations" / f"instances_{split}.json", "COCO annotation file",
        "Unpack annotations_trainval2014.zip or annotations_trainval2017.zip (cocodataset.org) into the COCO root.",
    )  # fmt: skip
    categories, images, instances = load_instances(annotation_file)
    jobs, table = [], {}
    for image in images:
        stem = Path(image["file_name"]).stem
        image_instances = instances.get(image["id"], [])
        jobs.append((root / MASK_FOLDER / split / f"{stem}.png", (image_instances, image["height"], image["width"])))
        tags = np.zeros(len(categories), dtype=np.float32)
        for _, _, label, iscrowd, _ in image_instances:
            if not iscrowd:
                tags[label - 1] = 1.0
        table[stem] = tags
    written = write_label_pngs(
        _convert, jobs, make_palette(len(categories) + 1), overwrite=overwrite, workers=workers, desc="COCO masks"
    )
    save_npy(root / f"cls_labels_{split}.npy", **table)
    with_annotations = sum(1 for image in images if instances.get(image["id"]))
    return {"images": len(images), "with_annotations": with_annotations, "written": written}
