"""Datasets: real items of each shared set (skipped when absent), built-by-name API, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rca.config import CONFIG_DIR, load_config
from rca.data import build_dataset, dataset_options, make_palette
from rca.data.base import tags_from_mask
from rca.data.palette import palette_from_colors
from rca.data.synthetic import SHAPE_COLORS
from rca.data.transforms import eval_transform
from rca.io import save_label_png

from helpers import write_voc

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MSRC_VALUE_MAP = {0: 255, **{raw: raw - 1 for raw in range(1, 24)}}


def real_root(name: str) -> Path:
    root = DATA / name
    if not root.is_dir():
        pytest.skip(f"real data {root} not present")
    return root


def check_item(dataset, item) -> None:
    """Shapes, dtypes, value ranges and tag/mask consistency of one item."""
    image, mask, tags = item["image"], item["mask"], item["tags"]
    assert isinstance(item["id"], str)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert mask.dtype == np.int64 and mask.shape == image.shape[:2]
    values = set(np.unique(mask).tolist())
    assert values <= set(range(dataset.num_classes)) | {255}
    assert tags.dtype == np.float32 and tags.shape == (dataset.num_classes - dataset.has_background,)
    assert set(np.unique(tags).tolist()) <= {0.0, 1.0}


# ---------------------------------------------------------------------------------------- palette
def test_make_palette_is_the_voc_colour_map():
    palette = make_palette(21)
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]
    assert palette[2].tolist() == [0, 128, 0]
    assert palette[15].tolist() == [192, 128, 128]  # person
    assert palette[20].tolist() == [0, 64, 128]  # tvmonitor
    assert palette[255].tolist() == [224, 224, 192]
    assert palette[21:255].sum() == 0
    assert len({tuple(c) for c in palette[:21]}) == 21
    with pytest.raises(ValueError):
        make_palette(256)


def test_palette_from_colors():
    palette = palette_from_colors([(1, 2, 3), (4, 5, 6)])
    assert palette[1].tolist() == [4, 5, 6] and palette[255].tolist() == [224, 224, 192]
    with pytest.raises(ValueError):
        palette_from_colors([(1, 2)])


def test_tags_from_mask():
    mask = np.array([[0, 2, 255], [2, 2, 0]])
    assert tags_from_mask(mask, 4, has_background=True).tolist() == [0, 1, 0]
    assert tags_from_mask(mask, 4, has_background=False).tolist() == [1, 0, 1, 0]


# ---------------------------------------------------------------------------------------- build_dataset
def test_build_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'cityscape'"):
        build_dataset("cityscape", tmp_path, "train")
    with pytest.raises(TypeError, match="no option.*num_imgs.*num_images"):
        build_dataset("synthetic", None, "train", num_imgs=3)
    with pytest.raises(FileNotFoundError, match="data.root"):
        build_dataset("voc", tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match="data.root"):
        build_dataset("camvid", tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="data.root"):
        build_dataset("coco", tmp_path, "train2014")
    assert dataset_options("voc") == ["cls_labels"]


# ---------------------------------------------------------------------------------------- VOC
def test_voc_real_items():
    root = real_root("voc12_mini")
    dataset = build_dataset("voc", root, "train")  # the parent of VOCdevkit/VOC2012 is accepted
    assert dataset.ids == ["2011_000003", "2011_000006", "2011_000025", "2011_003066"]
    assert dataset.num_classes == 21 and dataset.has_background and dataset.has_masks
    assert dataset.class_names[0] == "background" and dataset.class_names[15] == "person"
    for index in range(len(dataset)):
        item = dataset[index]
        check_item(dataset, item)
        present = set(np.unique(item["mask"]).tolist()) - {0, 255}
        assert set((np.flatnonzero(item["tags"]) + 1).tolist()) == present
    item = dataset[0]
    assert item["image"].shape == (338, 500, 3)
    assert set(np.unique(item["mask"]).tolist()) == {0, 5, 15, 255}  # bottle, person
    assert np.array_equal(dataset.load_tags()[0], item["tags"])
    with Image.open(root / "VOCdevkit/VOC2012/SegmentationClassAug/2011_000003.png") as png:
        official = np.asarray(png.getpalette()[: 21 * 3]).reshape(21, 3)
    assert np.array_equal(official, dataset.palette[:21])


def test_voc_cls_labels_both_key_styles(tmp_path):
    root = real_root("voc12_mini") / "VOCdevkit" / "VOC2012"
    ids = ["2011_000003", "2011_000006", "2011_000025", "2011_003066"]
    vectors = {image_id: np.eye(20, dtype=np.float32)[i] for i, image_id in enumerate(ids)}
    np.save(tmp_path / "psa.npy", vectors)
    np.save(tmp_path / "irn.npy", {int(k.replace("_", "")): v for k, v in vectors.items()})
    for name in ("psa.npy", "irn.npy"):
        dataset = build_dataset("voc", root, "train", cls_labels=str(tmp_path / name))
        assert np.array_equal(dataset.load_tags(), np.eye(20, dtype=np.float32)[:4])
        assert np.flatnonzero(dataset[2]["tags"]).tolist() == [2]
    np.save(tmp_path / "short.npy", {ids[0]: vectors[ids[0]]})
    with pytest.raises(ValueError, match="2011_000006"):
        build_dataset("voc", root, "train", cls_labels=str(tmp_path / "short.npy"))


def test_voc_test_split_has_images_only(tmp_path):
    """VOC2012 test (a list and JPEGs, no masks, no annotations) loads as items {"id", "image"}; tags
    come only from a cls_labels file; training the classifier on it is refused by name."""
    root = tmp_path / "VOC2012"
    synthetic = {split: build_dataset("synthetic", None, split, num_images=3, image_size=32)
                 for split in ("train", "test")}
    ids = write_voc(root, synthetic, images_only=("test",))
    dataset = build_dataset("voc", root, "test")
    assert dataset.ids == ids["test"] and len(dataset) == 3
    assert not dataset.has_masks and not dataset.has_tags and dataset.num_tags == 20
    for index in range(3):
        item = dataset[index]
        assert set(item) == {"id", "image"} and item["id"] == ids["test"][index]
        assert item["image"].shape == (32, 32, 3) and item["image"].dtype == np.uint8
    assert set(build_dataset("voc", root, "test", transform=eval_transform())[0]) == {"id", "image"}
    for call in (lambda: dataset.require_tags("data.train_split"), dataset.load_tags):
        with pytest.raises(ValueError, match=r"split 'test' has no image-level tags.*SegmentationClassAug.*cls_labels"):
            call()
    assert build_dataset("voc", root, "train").has_tags  # from its masks

    np.save(tmp_path / "cls.npy", {name: np.arange(20) == 3 for name in ids["test"]})
    tagged = build_dataset("voc", root, "test", cls_labels=tmp_path / "cls.npy")
    assert tagged.has_tags and not tagged.has_masks and set(tagged[0]) == {"id", "image", "tags"}
    assert np.flatnonzero(tagged[0]["tags"]).tolist() == [3]
    tagged.require_tags("data.train_split")
    with pytest.raises(FileNotFoundError, match="val.txt"):
        build_dataset("voc", root, "val")


# ---------------------------------------------------------------------------------------- COCO
def test_coco_real_items():
    root = real_root("coco_mini")
    dataset = build_dataset("coco", root, "train")  # year inferred from instances_train2017.json
    assert len(dataset) == 160 and dataset.num_classes == 81 and dataset.has_background
    assert dataset.class_names[:3] == ["background", "person", "bicycle"]
    assert dataset.class_names[80] == "toothbrush" and dataset.category_ids[-1] == 90
    index = dataset.ids.index("000000000790")
    item = dataset[index]
    check_item(dataset, item)
    names = {dataset.class_names[j + 1] for j in np.flatnonzero(item["tags"])}
    assert names == {"person", "dog", "bottle", "wine glass", "cup", "fork", "knife", "bowl", "cake", "chair",
                     "potted plant", "dining table", "clock"}  # fmt: skip
    assert set(np.unique(item["mask"]).tolist()) - {0, 255} == {j + 1 for j in np.flatnonzero(item["tags"])}
    crowd = dataset[dataset.ids.index("000000129648")]  # has a crowd "person" region
    check_item(dataset, crowd)
    assert (crowd["mask"] == 255).sum() > 100
    assert np.array_equal(dataset.load_tags()[index], item["tags"])
    with pytest.raises(ValueError, match="year"):
        build_dataset("coco", root, "train2017", year=2014)


def _coco_fixture(root: Path) -> None:
    """A 10x10 image: a big category-3 box, a small category-1 box on it, a crowd RLE, an empty image."""
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "train2017" / name)
    crowd = np.zeros((10, 10), np.uint8)
    crowd[8:10, 0:10] = 1  # bottom two rows; column-major RLE
    flat = crowd.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    coco = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": 10, "width": 10},
                   {"id": 8, "file_name": "b.jpg", "height": 10, "width": 10}],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 4.0,  # small, listed first
             "segmentation": [[2, 2, 4, 2, 4, 4, 2, 4]]},
            {"id": 2, "image_id": 7, "category_id": 3, "iscrowd": 0, "area": 49.0,
             "segmentation": [[0, 0, 7, 0, 7, 9, 0, 9]]},
            {"id": 3, "image_id": 7, "category_id": 90, "iscrowd": 1, "area": 20.0,
             "segmentation": {"size": [10, 10], "counts": counts}},
        ],
    }  # fmt: skip
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(coco))


def test_coco_rasterisation_known_mask(tmp_path):
    _coco_fixture(tmp_path)
    dataset = build_dataset("coco", tmp_path, "train", year=2017)
    assert dataset.class_names == ["background", "person", "car", "toothbrush"]
    assert dataset.ids == ["a", "b"]
    mask = dataset[0]["mask"]
    reference = np.zeros((10, 10), np.int64)
    reference[0:9, 0:7] = 2  # car polygon x 0..7, y 0..9: pixels of columns 0..6, rows 0..8
    reference[2:4, 2:4] = 1  # the smaller person stays on top
    reference[9, :] = 255  # crowd rows not covered by an instance
    reference[8, 7:] = 255
    assert np.array_equal(mask, reference)
    assert dataset[0]["tags"].tolist() == [1, 1, 0]  # crowd toothbrush is not a tag
    assert dataset[1]["tags"].tolist() == [0, 0, 0] and not dataset[1]["mask"].any()
    assert build_dataset("coco", tmp_path, "train2017", skip_empty=True).ids == ["a"]


# ---------------------------------------------------------------------------------------- folder (MSRC)
def test_folder_msrc_real_items():
    root = real_root("msrc_v2")
    dataset = build_dataset("folder", root, "val", value_map={str(k): v for k, v in MSRC_VALUE_MAP.items()})
    assert len(dataset) == 60 and dataset.num_classes == 23 and not dataset.has_background
    assert dataset.class_names[0] == "building" and dataset.class_names[22] == "boat"
    raw_values = set()
    for index in range(0, len(dataset), 6):
        item = dataset[index]
        check_item(dataset, item)
        assert item["tags"].shape == (23,)
        assert set(np.flatnonzero(item["tags"]).tolist()) == set(np.unique(item["mask"]).tolist()) - {255}
        with Image.open(root / "labels" / f"{item['id']}.png") as png:
            raw = np.asarray(png).astype(np.int64)
        raw_values |= set(np.unique(raw).tolist())
        assert np.array_equal(item["mask"], np.where(raw == 0, 255, raw - 1))
    assert 0 in raw_values  # void present, so the 255 path was exercised
    tags = dataset.load_tags()
    assert tags.shape == (60, 23) and tags.sum(1).min() >= 1


def test_msrc_config_value_map_gives_labels_0_to_22_and_void_255(tmp_path):
    # MSRC-v2 masks: 0 = void, raw 1..23 = the classes in classes.txt order ("<raw value> <name>" lines).
    data = load_config(CONFIG_DIR / "msrc.yaml").data
    options = data.options
    names = [f"class{raw}" for raw in range(1, 24)]
    for folder in (options["image_dir"], options["mask_dir"]):
        (tmp_path / folder).mkdir()
    (tmp_path / options["class_file"]).write_text("".join(f"{raw} {name}\n" for raw, name in
                                                          enumerate(["void"] + names)))
    (tmp_path / "train.txt").write_text("x\n")
    raw = np.arange(24).reshape(4, 6)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / options["image_dir"] / "x.png")
    Image.fromarray(raw.astype(np.uint8)).save(tmp_path / options["mask_dir"] / "x.png")
    dataset = build_dataset(data.name, tmp_path, "train", **options)
    assert dataset.class_names == names and dataset.num_classes == 23 and not dataset.has_background
    assert dataset[0]["mask"].tolist() == np.where(raw == 0, 255, raw - 1).tolist()


def test_folder_class_file_and_value_map(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "images" / "x.jpg")
    save_label_png(tmp_path / "labels" / "x.png", np.array([[0, 1, 2], [7, 40, 2]]), make_palette(3))
    (tmp_path / "classes.txt").write_text("sky\nroad\ncar\n")
    (tmp_path / "train.txt").write_text("x\n")
    dataset = build_dataset("folder", tmp_path, "train", image_ext=".png", has_background=True)
    assert dataset.class_names == ["sky", "road", "car"] and dataset.has_background
    with pytest.raises(ValueError, match="mask values \\[7, 40\\]"):
        dataset[0]  # raw values used as labels: 7 and 40 are no class
    dataset = build_dataset("folder", tmp_path, "train", value_map={0: 2, 1: 0, 2: 1})
    item = dataset[0]
    assert dataset.class_names == ["road", "car", "sky"]
    assert item["mask"].tolist() == [[2, 0, 1], [255, 255, 1]]  # unmapped raw values -> 255
    assert item["tags"].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="without gaps"):
        build_dataset("folder", tmp_path, "train", value_map={0: 0, 1: 2})
    with pytest.raises(FileNotFoundError, match="val.txt"):
        build_dataset("folder", tmp_path, "val")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "val.txt").write_text("x\n")
    assert build_dataset("folder", tmp_path, "val", split_dir=lists).ids == ["x"]  # lists kept elsewhere
    with pytest.raises(FileNotFoundError, match="split folder"):
        build_dataset("folder", tmp_path, "val", split_dir=tmp_path / "nowhere")


def test_shipped_msrc_split_keeps_every_group_and_class_on_both_sides():
    # data/splits/msrc_v2 (scripts/split_msrc.py): every 7th id in (group, number) order to val. The cut of the
    # sorted id list in shared/data puts whole groups (bicycles, sheep) into val instead.
    lists = Path(__file__).resolve().parents[1] / "data" / "splits" / "msrc_v2"
    train, val = ((lists / f"{name}.txt").read_text().split() for name in ("train", "val"))
    assert len(train) == 360 and len(val) == 60 and not set(train) & set(val)
    group = lambda ids: {i.split("_")[0] for i in ids}  # noqa: E731
    assert group(val) == group(train) and len(group(val)) == 20
    root = real_root("msrc_v2")
    options = {"value_map": {str(k): v for k, v in MSRC_VALUE_MAP.items()}}
    assert set(train) | set(val) == set(build_dataset("folder", root, "train", **options).ids) | set(
        build_dataset("folder", root, "val", **options).ids)
    counts = {name: build_dataset("folder", root, name, split_dir=lists, **options).load_tags().sum(0)
              for name in ("train", "val")}
    total = counts["train"] + counts["val"]
    assert (counts["train"][total >= 10] >= 0.75 * total[total >= 10]).all()  # old split: 1 of 26 bicycles


# ---------------------------------------------------------------------------------------- CamVid
def test_camvid_real_items():
    root = real_root("camvid")
    train = build_dataset("camvid", root, "train")
    dataset = build_dataset("camvid", root, "val")
    assert len(train) == 367 and len(dataset) == 101
    assert dataset.num_classes == 11 and not dataset.has_background
    assert dataset.class_names[0] == "Sky" and dataset.class_names[-1] == "Bicyclist"
    item = dataset[0]
    check_item(dataset, item)
    assert item["image"].shape == (360, 480, 3)
    with Image.open(root / "valannot" / f"{item['id']}.png") as png:
        raw = np.asarray(png).astype(np.int64)
    assert (raw == 11).any()  # unlabelled pixels exist and become 255
    assert np.array_equal(item["mask"], np.where(raw == 11, 255, raw))
    assert set(np.flatnonzero(item["tags"]).tolist()) == set(np.unique(raw).tolist()) - {11}


# ---------------------------------------------------------------------------------------- synthetic
def test_synthetic_determinism_and_splits():
    a = build_dataset("synthetic", None, "train", num_images=8, seed=3)
    b = build_dataset("synthetic", "ignored", "train", num_images=8, seed=3)
    val = build_dataset("synthetic", None, "val", num_images=8, seed=3)
    assert len(build_dataset("synthetic", None, "train")) == 200
    assert len(build_dataset("synthetic", None, "val")) == 50
    for index in range(8):
        x, y = a[index], b[index]
        assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["mask"], y["mask"])
        assert np.array_equal(x["image"], a[index]["image"])
        assert not np.array_equal(x["image"], val[index]["image"])
    other_seed = build_dataset("synthetic", None, "train", num_images=8, seed=4)
    assert not np.array_equal(a[0]["mask"], other_seed[0]["mask"])


def test_synthetic_items_masks_tags_and_colours():
    dataset = build_dataset("synthetic", None, "train", num_images=40, num_classes=6, image_size=64)
    assert dataset.num_classes == 7 and dataset.class_names[:3] == ["background", "disc", "square"]
    tags = dataset.load_tags()
    assert tags.shape == (40, 6) and tags.sum(0).min() >= 1  # every class occurs
    colour_sum = np.zeros((7, 3))
    colour_count = np.zeros(7)
    for index in range(40):
        item = dataset[index]
        check_item(dataset, item)
        assert item["image"].shape == (64, 64, 3)
        assert 1 <= item["tags"].sum() <= 3 and (item["mask"] == 0).any()
        assert np.array_equal(item["tags"], tags[index])
        assert set(np.flatnonzero(item["tags"]) + 1) == set(np.unique(item["mask"]).tolist()) - {0}
        for label in range(7):
            region = item["mask"] == label
            colour_sum[label] += item["image"][region].sum(0)
            colour_count[label] += region.sum()
    mean_colour = colour_sum / colour_count[:, None]
    for label in range(1, 7):  # objects keep their class colour on average (jitter and noise are zero-mean)
        assert np.abs(mean_colour[label] - SHAPE_COLORS[label - 1]).max() < 25
    background = mean_colour[0]
    assert background.max() - background.min() < 40  # low-saturation background
    with pytest.raises(ValueError, match="num_classes"):
        build_dataset("synthetic", None, "train", num_classes=7)
