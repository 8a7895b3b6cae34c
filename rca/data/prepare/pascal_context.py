"""PASCAL-Context: the official 459-class labels -> 60-class PNGs (0 = background) and split lists.

Inputs: VOC 2010 (``VOCtrainval_03-May-2010.tar`` -> ``VOCdevkit/VOC2010`` with ``JPEGImages/`` and
``ImageSets/Main/{train,val}.txt``) and the official ``trainval.tar.gz`` of PASCAL-Context
(``trainval/<id>.mat``, field ``LabelMap``: ``(H, W)`` uint16, 1..459 = ``labels.txt`` ids, 0 = unlabelled).

Outputs in the VOC2010 folder (what :class:`rca.data.pascal_context.PascalContext` reads):

- ``SegmentationClassContext/<id>.png``: the 59 classes of
  :data:`rca.data.pascal_context.CONTEXT59_IDS` as 1..59 in that order, every other id and the
  unlabelled pixels as 0 (background).
- ``ImageSets/SegmentationContext/{train,val}.txt``: the ids of VOC 2010's ``Main`` train / val lists
  that have a label file (4,998 / 5,105 with the full download), sorted.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.io

from rca.data.base import read_id_list, require_path
from rca.data.palette import make_palette
from rca.data.pascal_context import CONTEXT59_IDS, resolve_root
from rca.data.prepare import write_id_list, write_label_pngs

NUM_CONTEXT_IDS = 459
HINT = (
    "Unpack VOCtrainval_03-May-2010.tar (VOCdevkit/VOC2010) and PASCAL-Context's trainval.tar.gz "
    "(cs.stanford.edu/~roozbeh/pascal-context), then pass their folders."
)
# official id (0..459) -> 0 (background) or 1..59
CONTEXT60_LOOKUP = np.zeros(NUM_CONTEXT_IDS + 1, dtype=np.int64)
CONTEXT60_LOOKUP[list(CONTEXT59_IDS)] = np.arange(1, len(CONTEXT59_IDS) + 1)


def context60_labels(label_map: np.ndarray) -> np.ndarray:
    """``(H, W)`` int64 0..59 from an official ``LabelMap`` (ids 0..459).

    Raises:
        ValueError: ids above 459 (not a PASCAL-Context label map).
    """
    label_map = np.asarray(label_map, dtype=np.int64)
    if label_map.size and (label_map.min() < 0 or label_map.max() > NUM_CONTEXT_IDS):
        raise ValueError(f"LabelMap values must be 0..{NUM_CONTEXT_IDS}, got {label_map.min()}..{label_map.max()}")
    return CONTEXT60_LOOKUP[label_map]


def _convert(path: str) -> np.ndarray:
    mat = scipy.io.loadmat(path)
    if "LabelMap" not in mat:
        raise ValueError(f"{path}: no 'LabelMap'; expected a file of PASCAL-Context's trainval.tar.gz")
    return context60_labels(mat["LabelMap"])


def prepare_pascal_context(
    voc2010_root: str | os.PathLike, labels_dir: str | os.PathLike, *, overwrite: bool = False, workers: int = 1
) -> dict[str, int]:
    """Write ``SegmentationClassContext/`` and ``ImageSets/SegmentationContext/{train,val}.txt``.

    Args:
        voc2010_root: the ``VOC2010`` folder, or a folder holding ``VOCdevkit/VOC2010``.
        labels_dir: the ``trainval`` folder of PASCAL-Context's ``trainval.tar.gz`` (``<id>.mat``).
        overwrite: rewrite existing PNGs (the lists are always rewritten).
        workers: processes converting label maps.

    Returns:
        Counts: ``train``, ``val`` (list sizes), ``written`` (PNGs written now).

    Raises:
        FileNotFoundError: a missing input (the message names the path and the download).
    """
    root = resolve_root(Path(voc2010_root).expanduser(), HINT)
    labels_dir = require_path(Path(labels_dir).expanduser(), "PASCAL-Context label folder", HINT)
    available = {path.stem for path in labels_dir.glob("*.mat")}
    if not available:
        raise FileNotFoundError(f"no {labels_dir}/<id>.mat files. {HINT}")
    counts = {}
    jobs = []
    for split in ("train", "val"):
        main_list = root / "ImageSets" / "Main" / f"{split}.txt"
        ids = sorted({line.split()[0] for line in read_id_list(main_list, HINT)} & available)
        write_id_list(root / "ImageSets" / "SegmentationContext" / f"{split}.txt", ids)
        jobs += [(root / "SegmentationClassContext" / f"{image_id}.png", str(labels_dir / f"{image_id}.mat"))
                 for image_id in ids]  # fmt: skip
        counts[split] = len(ids)
    counts["written"] = write_label_pngs(
        _convert, jobs, make_palette(len(CONTEXT59_IDS) + 1), overwrite=overwrite, workers=workers,
        desc="PASCAL-Context labels",
    )  # fmt: skip
    return counts
