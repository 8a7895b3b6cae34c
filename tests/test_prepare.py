"""Preparation steps on tiny fixtures in the official download formats, outputs checked value by value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from rca.data import build_dataset, make_palette
from rca.data.pascal_context import CONTEXT59_CLASSES
from rca.data.prepare.coco import prepare_coco
from rca.data.prepare.pascal_context import context60_labels, prepare_pascal_context
from rca.data.prepare.voc import prepare_voc, read_sbd_mask, train_aug_ids
from rca.io import load_label_png, load_npy, save_label_png

REPO = Path(__file__).resolve().parents[1]


def write_jpg(path: Path, height: int, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(path)


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


# ---------------------------------------------------------------------------------------- VOC + SBD
def save_sbd_mat(path: Path, segmentation: np.ndarray) -> None:
    """An SBD cls/<id>.mat: struct GTcls with Segmentation, Boundaries (cell), CategoriesPresent."""
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = np.zeros(segmentation.shape, np.uint8)
    present = np.unique(segmentation[segmentation > 0]).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": segmentation.astype(np.uint8), "Boundaries": boundaries,
                                      "CategoriesPresent": present}})  # fmt: skip


def write_voc_xml(path: Path, names: list[str]) -> None:
    objects = "".join(f"<object><name>{name}</name><difficult>{i % 2}</difficult></object>" for i, name in enumerate(names))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename>{objects}</annotation>")


VOC_TRAIN_MASK = np.array([[0, 15, 255], [15, 15, 0]])  # person with a 255 border
VOC_VAL_MASK = np.array([[12, 12, 0], [255, 0, 0]])  # dog
SBD_MASKS = {
    "2008_000003": np.array([[1, 1, 0], [0, 0, 20]]),  # aeroplane, tvmonitor
    "2008_000004": np.array([[0, 7, 7], [7, 7, 0]]),  # car
    "2007_000002": np.array([[3, 3, 3], [3, 3, 3]]),  # SBD's mask of a VOC val image: VOC's must win
}
XML_NAMES = {
    "2007_000001": ["person", "bottle"],  # bottle is an annotated object without mask pixels here
    "2007_000002": ["dog"],
    "2008_000003": ["aeroplane", "tvmonitor", "aeroplane"],
    "2008_000004": ["car"],
}


def _voc_fixture(root: Path) -> tuple[Path, Path]:
    voc = root / "VOCdevkit" / "VOC2012"
    sbd = root / "benchmark_RELEASE"
    for image_id in XML_NAMES:
        write_jpg(voc / "JPEGImages" / f"{image_id}.jpg", 2, 3)
        write_voc_xml(voc / "Annotations" / f"{image_id}.xml", XML_NAMES[image_id])
    save_label_png(voc / "SegmentationClass" / "2007_000001.png", VOC_TRAIN_MASK, make_palette(21))
    save_label_png(voc / "SegmentationClass" / "2007_000002.png", VOC_VAL_MASK, make_palette(21))
    write_lines(voc / "ImageSets" / "Segmentation" / "train.txt", ["2007_000001"])
    write_lines(voc / "ImageSets" / "Segmentation" / "val.txt", ["2007_000002"])
    for image_id, mask in SBD_MASKS.items():
        save_sbd_mat(sbd / "dataset" / "cls" / f"{image_id}.mat", mask)
    write_lines(sbd / "dataset" / "train.txt", ["2008_000003", "2007_000002"])
    write_lines(sbd / "dataset" / "val.txt", ["2008_000004"])
    return voc, sbd


def test_train_aug_ids_rule():
    assert train_aug_ids(["a", "b"], ["c"], ["d", "a"], ["b", "e"]) == ["a", "c", "d"]


def test_prepare_voc_masks_list_and_labels(tmp_path):
    voc, sbd = _voc_fixture(tmp_path)
    assert np.array_equal(read_sbd_mask(sbd / "dataset" / "cls" / "2008_000003.mat"), SBD_MASKS["2008_000003"])
    counts = prepare_voc(tmp_path, sbd)
    assert counts == {"masks": 4, "written": 4, "train_aug": 3, "cls_labels": 4}
    aug = voc / "SegmentationClassAug"
    assert sorted(p.name for p in aug.iterdir()) == [f"{i}.png" for i in sorted(XML_NAMES)]
    assert np.array_equal(load_label_png(aug / "2007_000001.png"), VOC_TRAIN_MASK)
    assert np.array_equal(load_label_png(aug / "2007_000002.png"), VOC_VAL_MASK)  # VOC's, not SBD's
    assert np.array_equal(load_label_png(aug / "2008_000003.png"), SBD_MASKS["2008_000003"])
    assert np.array_equal(load_label_png(aug / "2008_000004.png"), SBD_MASKS["2008_000004"])
    with Image.open(aug / "2008_000004.png") as png:
        assert png.mode == "P"  # opens with VOC colours
    lines = (voc / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    assert lines == ["2007_000001", "2008_000003", "2008_000004"]  # VOC val image 2007_000002 left out
    table = load_npy(voc / "cls_labels.npy")
    assert sorted(table) == sorted(XML_NAMES)
    assert np.flatnonzero(table["2007_000001"]).tolist() == [4, 14]  # bottle, person (tag = class - 1)
    assert np.flatnonzero(table["2008_000003"]).tolist() == [0, 19]
    dataset = build_dataset("voc", voc, "train_aug", cls_labels=voc / "cls_labels.npy")
    assert dataset.ids == lines and np.array_equal(dataset[2]["mask"], SBD_MASKS["2008_000004"])
    assert np.flatnonzero(dataset[0]["tags"]).tolist() == [4, 14]
    save_label_png(aug / "2008_000004.png", np.zeros((2, 3)), make_palette(21))
    assert prepare_voc(voc, sbd / "dataset")["written"] == 0  # finished outputs are kept ...
    assert prepare_voc(voc, sbd, overwrite=True)["written"] == 4  # ... unless told to overwrite
    assert np.array_equal(load_label_png(aug / "2008_000004.png"), SBD_MASKS["2008_000004"])


def test_prepare_voc_errors_name_the_missing_input(tmp_path):
    voc, sbd = _voc_fixture(tmp_path)
    with pytest.raises(FileNotFoundError, match="SBD not found.*download_voc.sh"):
        prepare_voc(voc, tmp_path / "nowhere")
    (voc / "Annotations" / "2008_000004.xml").unlink()
    with pytest.raises(FileNotFoundError, match="2008_000004.xml"):
        prepare_voc(voc, sbd)


# ---------------------------------------------------------------------------------------- COCO
def uncompressed_rle(mask: np.ndarray) -> dict:
    counts, current, run = [], 0, 0
    for value in mask.flatten(order="F"):  # COCO RLE runs go down the columns, starting with zeros
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def box(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
    """Polygon whose rasterisation covers columns x0..x1-1 and rows y0..y1-1."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _coco_fixture(root: Path) -> np.ndarray:
    """Two 8x8 train2017 images: overlapping person/car/dog (car and dog tie on area) + a crowd; one empty."""
    for name in ("000000000001.jpg", "000000000002.jpg"):
        write_jpg(root / "train2017" / name, 8, 8)
    crowd = np.zeros((8, 8), np.uint8)
    crowd[6:8, :] = 1
    annotations = [
        {"id": 3, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 16.0, "segmentation": box(4, 4, 8, 8)},
        {"id": 5, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 36.0, "segmentation": box(0, 0, 6, 6)},
        {"id": 6, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 16.0, "segmentation": uncompressed_rle(crowd)},
        {"id": 4, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 16.0, "segmentation": box(2, 2, 6, 6)},
    ]
    coco = {
        "images": [{"id": 2, "file_name": "000000000002.jpg", "height": 8, "width": 8},
                   {"id": 1, "file_name": "000000000001.jpg", "height": 8, "width": 8}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": annotations,
    }  # fmt: skip
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(coco))
    expected = np.zeros((8, 8), np.int64)
    expected[0:6, 0:6] = 1  # person, the largest, painted first
    expected[4:8, 4:8] = 3  # dog (area 16, id 3)
    expected[2:6, 2:6] = 2  # car (area 16, id 4): same area, higher id, so on top of the dog
    expected[6:8, 0:4] = 255  # crowd where no instance is
    return expected


def test_prepare_coco_pngs_and_labels(tmp_path):
    expected = _coco_fixture(tmp_path)
    counts = prepare_coco(tmp_path, "train2017")
    assert counts == {"images": 2, "with_annotations": 1, "written": 2}
    png_dir = tmp_path / "SegmentationClass" / "train2017"
    assert np.array_equal(load_label_png(png_dir / "000000000001.png"), expected)
    assert not load_label_png(png_dir / "000000000002.png").any()
    table = load_npy(tmp_path / "cls_labels_train2017.npy")
    assert table["000000000001"].tolist() == [1, 1, 1] and table["000000000002"].tolist() == [0, 0, 0]
    on_the_fly = build_dataset("coco", tmp_path, "train2017")
    from_pngs = build_dataset("coco", tmp_path, "train2017", masks="SegmentationClass")
    assert on_the_fly.ids == from_pngs.ids == ["000000000001", "000000000002"]
    for index in range(2):
        assert np.array_equal(on_the_fly[index]["mask"], from_pngs[index]["mask"])
    assert np.array_equal(on_the_fly[0]["mask"], expected)
    assert build_dataset("coco", tmp_path, "train", skip_empty=True).ids == ["000000000001"]
    with pytest.raises(FileNotFoundError, match="prepare_coco.py --root .* --split train2017"):
        build_dataset("coco", tmp_path, "train2017", masks="Elsewhere")


def test_prepare_coco_script(tmp_path):
    _coco_fixture(tmp_path)
    done = subprocess.run(
        [sys.executable, "scripts/prepare_coco.py", "--root", str(tmp_path), "--split", "train2017", "--processes", "2"],
        cwd=REPO, capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": ""},
    )
    assert done.returncode == 0, done.stderr
    assert "2 images (1 with at least one annotation" in done.stdout
    assert len(list((tmp_path / "SegmentationClass" / "train2017").glob("*.png"))) == 2


# ---------------------------------------------------------------------------------------- PASCAL-Context
def test_context60_mapping():
    label_map = np.array([[0, 2, 9, 284], [458, 459, 1, 3]])  # unlabelled, aeroplane, bag, person / wood, 459, others
    assert context60_labels(label_map).tolist() == [[0, 1, 2, 37], [59, 0, 0, 0]]
    # ids of labels.txt (459 classes, alphabetical) spread over the list -> their 59-class names
    known = {2: "aeroplane", 65: "cat", 104: "cup", 189: "ground", 284: "person", 368: "sofa", 427: "tvmonitor",
             458: "wood"}  # fmt: skip
    labels = context60_labels(np.array([list(known)]))[0]
    assert [CONTEXT59_CLASSES[label - 1] for label in labels] == list(known.values())
    with pytest.raises(ValueError, match="0..459"):
        context60_labels(np.array([[460]]))


def test_prepare_pascal_context(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    for image_id in ("2008_000002", "2008_000003", "2008_000099"):
        write_jpg(voc / "JPEGImages" / f"{image_id}.jpg", 2, 2)
    write_lines(voc / "ImageSets" / "Main" / "train.txt", ["2008_000099", "2008_000002"])  # 099 has no label file
    write_lines(voc / "ImageSets" / "Main" / "val.txt", ["2008_000003"])
    labels = tmp_path / "trainval"
    labels.mkdir()
    scipy.io.savemat(labels / "2008_000002.mat", {"LabelMap": np.array([[0, 2], [284, 5]], np.uint16)})
    scipy.io.savemat(labels / "2008_000003.mat", {"LabelMap": np.array([[458, 459], [9, 1]], np.uint16)})
    assert prepare_pascal_context(tmp_path, labels) == {"train": 1, "val": 1, "written": 2}
    out = voc / "SegmentationClassContext"
    assert load_label_png(out / "2008_000002.png").tolist() == [[0, 1], [37, 0]]
    assert load_label_png(out / "2008_000003.png").tolist() == [[59, 0], [2, 0]]
    lists = voc / "ImageSets" / "SegmentationContext"
    assert (lists / "train.txt").read_text() == "2008_000002\n" and (lists / "val.txt").read_text() == "2008_000003\n"
    dataset = build_dataset("pascal_context", voc, "train")
    assert dataset.ids == ["2008_000002"] and dataset[0]["mask"].tolist() == [[255, 0], [36, 255]]
    with pytest.raises(FileNotFoundError, match="trainval.tar.gz"):
        prepare_pascal_context(voc, tmp_path / "missing")
