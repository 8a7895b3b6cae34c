"""PASCAL VOC 2012 + SBD: ``SegmentationClassAug``, the ``train_aug`` list and image-level labels.

Inputs are the official downloads (``scripts/download_voc.sh`` fetches them):

- ``VOCtrainval_11-May-2012.tar`` -> ``VOCdevkit/VOC2012/`` with ``JPEGImages/``, ``Annotations/<id>.xml``,
  ``SegmentationClass/<id>.png`` (palette PNGs, 0..20 and 255 on object borders) and
  ``ImageSets/Segmentation/{train,val}.txt`` (1,464 / 1,449 ids).
- ``benchmark.tgz`` (SBD, Hariharan et al., ICCV 2011) -> ``benchmark_RELEASE/dataset/`` with
  ``cls/<id>.mat`` (a struct ``GTcls`` whose field ``Segmentation`` is the 0..20 class map, no border
  labels) and ``{train,val}.txt`` (8,498 / 2,857 ids).

Outputs, in the VOC2012 folder (what :class:`rca.data.voc.VOCSegmentation` reads):

- ``SegmentationClassAug/<id>.png`` for every id of SBD train+val and VOC train+val (12,031 images):
  VOC's own mask where VOC has one (it marks borders and difficult objects 255), SBD's otherwise.
- ``ImageSets/Segmentation/train_aug.txt``: SBD train + SBD val + VOC train, minus VOC val, sorted
  (10,582 ids), the "trainaug" set of DeepLab, PSA, IRN and RCA.
- ``cls_labels.npy``: ``{id: (20,) float32 0/1}`` for the ids of ``train_aug`` and ``val``: the object
  classes named in ``Annotations/<id>.xml`` (every ``<object>``, difficult or truncated ones included,
  as IRN's ``make_cls_labels.py`` does), in the PSA format that the dataset option ``cls_labels`` reads.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import scipy.io

from rca.data.base import read_id_list, require_path
from rca.data.palette import make_palette
from rca.data.prepare import write_id_list, write_label_pngs
from rca.data.voc import VOC_CLASSES, resolve_root
from rca.io import load_label_png, save_npy

HINT = "Run scripts/download_voc.sh (or unpack VOCtrainval_11-May-2012.tar and SBD's benchmark.tgz)."


def read_sbd_mask(path: str | os.PathLike) -> np.ndarray:
    """``(H, W)`` int64 class map 0..20 of an SBD ``cls/<id>.mat`` file (``GTcls.Segmentation``)."""
    mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    if "GTcls" not in mat:
        raise ValueError(f"{path}: no 'GTcls' struct; expected an SBD cls/<id>.mat file")
    return np.asarray(mat["GTcls"].Segmentation, dtype=np.int64)


def read_xml_tags(path: str | os.PathLike) -> np.ndarray:
    """``(20,)`` float32 0/1: the VOC object classes named in a VOC ``Annotations/<id>.xml`` file.

    Raises:
        ValueError: an object name that is not one of the 20 VOC classes.
    """
    tags = np.zeros(len(VOC_CLASSES) - 1, dtype=np.float32)
    for name in ET.parse(path).getroot().iter("object"):
        label = name.findtext("name", "").strip()
        if label not in VOC_CLASSES[1:]:
            raise ValueError(f"{path}: object name {label!r} is not a VOC class")
        tags[VOC_CLASSES.index(label) - 1] = 1.0
    return tags


def train_aug_ids(sbd_train: list[str], sbd_val: list[str], voc_train: list[str], voc_val: list[str]) -> list[str]:
    """The trainaug ids: (SBD train | SBD val | VOC train) - VOC val, sorted."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def _sbd_dataset_dir(sbd_root: Path) -> Path:
    for candidate in (sbd_root, sbd_root / "dataset", sbd_root / "benchmark_RELEASE" / "dataset"):
        if (candidate / "cls").is_dir():
            return candidate
    raise FileNotFoundError(
        f"SBD not found under {sbd_root}: expected {sbd_root}/cls/ or {sbd_root}/benchmark_RELEASE/dataset/cls/. {HINT}"
    )


def _convert_mask(source: tuple[str, str]) -> np.ndarray:
    kind, path = source
    return load_label_png(path) if kind == "voc" else read_sbd_mask(path)


def prepare_voc(
    voc_root: str | os.PathLike, sbd_root: str | os.PathLike, *, overwrite: bool = False, workers: int = 1
) -> dict[str, int]:
    """Write ``SegmentationClassAug/``, ``train_aug.txt`` and ``cls_labels.npy`` into the VOC2012 folder.

    Args:
        voc_root: the ``VOC2012`` folder, or a folder holding ``VOCdevkit/VOC2012``.
        sbd_root: SBD's ``benchmark_RELEASE/dataset`` folder (or a folder above it).
        overwrite: rewrite existing PNGs (the list and label file are always rewritten).
        workers: processes converting masks.

    Returns:
        Counts: ``masks`` (ids with a mask), ``written`` (PNGs written now), ``train_aug``, ``cls_labels``.

    Raises:
        FileNotFoundError: a missing input (the message names the path and the download).
        ValueError: a bad ``.mat``/XML file, or an id of a list with no mask in either source.
    """
    voc = resolve_root(Path(voc_root).expanduser())
    sbd = _sbd_dataset_dir(Path(sbd_root).expanduser())
    lists = voc / "ImageSets" / "Segmentation"
    voc_train, voc_val = (read_id_list(lists / f"{split}.txt", HINT) for split in ("train", "val"))
    sbd_train, sbd_val = (read_id_list(sbd / f"{split}.txt", HINT) for split in ("train", "val"))

    sources = {}  # id -> ("voc" | "sbd", path); VOC's own masks win
    for image_id in sorted(set(sbd_train) | set(sbd_val)):
        sources[image_id] = ("sbd", str(sbd / "cls" / f"{image_id}.mat"))
    for image_id in voc_train + voc_val:
        path = voc / "SegmentationClass" / f"{image_id}.png"
        sources[image_id] = ("voc", str(require_path(path, "VOC mask", HINT)))
    out_dir = voc / "SegmentationClassAug"
    jobs = [(out_dir / f"{image_id}.png", source) for image_id, source in sorted(sources.items())]
    written = write_label_pngs(
        _convert_mask, jobs, make_palette(len(VOC_CLASSES)), overwrite=overwrite, workers=workers, desc="VOC masks"
    )

    train_aug = train_aug_ids(sbd_train, sbd_val, voc_train, voc_val)
    write_id_list(lists / "train_aug.txt", train_aug)
    labelled = sorted(set(train_aug) | set(voc_val))
    annotations = voc / "Annotations"
    table = {image_id: read_xml_tags(require_path(annotations / f"{image_id}.xml", "VOC annotation", HINT))
             for image_id in labelled}  # fmt: skip
    save_npy(voc / "cls_labels.npy", **table)
    return {"masks": len(sources), "written": written, "train_aug": len(train_aug), "cls_labels": len(table)}
