"""Readers of the full-supervision benchmarks on tiny fixtures in each official layout and encoding.

Each test writes a few images and label files exactly as the official download stores them (folder
names, file suffixes, raw label values), then checks ids, shapes, the label mapping value by value,
tags, and the error for a wrong root.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from rca.config import load_config
from rca.data import DATASETS, build_dataset
from rca.data.ade20k import ADE20K_CLASSES
from rca.data.cityscapes import CITYSCAPES_CLASSES
from rca.data.cocostuff import COCOSTUFF_CLASSES
from rca.data.pascal_context import CONTEXT59_CLASSES, CONTEXT59_IDS


def write_image(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(image).save(path)
    return image


def write_grey(path: Path, values) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, dtype=np.uint8), mode="L").save(path)


def tags_of(item) -> list[int]:
    return np.flatnonzero(item["tags"]).tolist()


def test_registry_lists_every_benchmark():
    assert {"voc", "coco", "folder", "camvid", "cityscapes", "ade20k", "cocostuff", "pascal_context"} <= set(DATASETS)
    assert len(CITYSCAPES_CLASSES) == 19 and len(ADE20K_CLASSES) == 150 and len(COCOSTUFF_CLASSES) == 171
    assert len(CONTEXT59_CLASSES) == len(CONTEXT59_IDS) == 59 and list(CONTEXT59_IDS) == sorted(CONTEXT59_IDS)


# ---------------------------------------------------------------------------------------- Cityscapes
def cityscapes_fixture(root: Path) -> Path:
    raw = [[7, 8, 0, 26], [33, 4, 30, 255]]  # road, sidewalk, unlabeled, car / bicycle, static, trailer, >33
    for city, frame in (("zurich", "000001_000019"), ("aachen", "000000_000019")):
        write_image(root / "leftImg8bit" / "val" / city / f"{city}_{frame}_leftImg8bit.png", 2, 4)
        write_grey(root / "gtFine" / "val" / city / f"{city}_{frame}_gtFine_labelIds.png", raw)
    return root


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    dataset = build_dataset("cityscapes", cityscapes_fixture(tmp_path), "val")
    assert dataset.ids == ["aachen_000000_000019", "zurich_000001_000019"]
    assert dataset.num_classes == 19 and not dataset.has_background and dataset.num_tags == 19
    item = dataset[0]
    assert item["image"].shape == (2, 4, 3) and item["mask"].dtype == np.int64
    assert item["mask"].tolist() == [[0, 1, 255, 13], [18, 255, 255, 255]]
    assert tags_of(item) == [0, 1, 13, 18]
    assert dataset.class_names[13] == "car" and tuple(dataset.palette[0]) == (128, 64, 128)


def test_cityscapes_wrong_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/train.*leftImg8bit_trainvaltest\.zip"):
        build_dataset("cityscapes", tmp_path, "train")


# ---------------------------------------------------------------------------------------- ADE20K
def ade20k_fixture(root: Path) -> Path:
    for index in (2, 1):
        image_id = f"ADE_val_0000000{index}"
        write_image(root / "images" / "validation" / f"{image_id}.jpg", 3, 2)
        write_grey(root / "annotations" / "validation" / f"{image_id}.png", [[0, 1], [150, 13], [1, 0]])
    return root


def test_ade20k_reduce_zero_label(tmp_path):
    root = ade20k_fixture(tmp_path / "ADEChallengeData2016")
    dataset = build_dataset("ade20k", root, "val")
    assert dataset.ids == ["ADE_val_00000001", "ADE_val_00000002"]
    assert dataset.num_classes == 150 and not dataset.has_background
    item = dataset[1]
    assert item["image"].shape == (3, 2, 3)
    assert item["mask"].tolist() == [[255, 0], [149, 12], [0, 255]]
    assert tags_of(item) == [0, 12, 149] and dataset.class_names[12] == "person"
    assert len(build_dataset("ade20k", root, "validation")) == 2
    with pytest.raises(FileNotFoundError, match=r"images/training.*ADEChallengeData2016"):
        build_dataset("ade20k", root, "train")
    with pytest.raises(ValueError, match="split 'test'"):
        build_dataset("ade20k", root, "test")


# ---------------------------------------------------------------------------------------- COCO-Stuff
def cocostuff_fixture(root: Path) -> Path:
    # 0-based stuffthingmap values: 0 person, 11 (id 12, street sign: unused), 12 stop sign (-> 11),
    # 91 (id 92 banner -> 80), 181 (id 182 wood -> 170), 255 unlabeled, 90 (id 91: unused)
    raw = [[0, 11, 12], [91, 181, 255], [90, 26, 24]]  # 26: id 27 backpack -> 24; 24: id 25 giraffe -> 23
    write_image(root / "images" / "val2017" / "000000000139.jpg", 3, 3)
    write_grey(root / "annotations" / "val2017" / "000000000139.png", raw)
    return root


def test_cocostuff_164k_stuffthingmaps(tmp_path):
    dataset = build_dataset("cocostuff", cocostuff_fixture(tmp_path), "val")
    assert dataset.ids == ["000000000139"] and dataset.num_classes == 171 and not dataset.has_background
    item = dataset[0]
    assert item["mask"].tolist() == [[0, 255, 11], [80, 170, 255], [255, 24, 23]]
    assert [dataset.class_names[k] for k in tags_of(item)] == [
        "person", "stop sign", "giraffe", "backpack", "banner", "wood"]  # fmt: skip
    assert len(build_dataset("cocostuff", tmp_path, "val2017")) == 1
    with pytest.raises(FileNotFoundError, match=r"images/train2017.*stuffthingmaps"):
        build_dataset("cocostuff", tmp_path, "train")


def test_cocostuff_10k_mat(tmp_path):
    image_id = "COCO_train2014_000000000077"
    write_image(tmp_path / "images" / f"{image_id}.jpg", 2, 3)
    labels = np.array([[0, 1, 12], [13, 92, 182]], dtype=np.uint16)  # 1-based: unlabeled, person, unused, stop sign ...
    (tmp_path / "annotations").mkdir()
    scipy.io.savemat(tmp_path / "annotations" / f"{image_id}.mat", {"S": labels, "names": np.array(["x"])})
    (tmp_path / "imageLists").mkdir()
    (tmp_path / "imageLists" / "train.txt").write_text(f"{image_id}\n")
    dataset = build_dataset("cocostuff", tmp_path, "train", version="10k")
    assert dataset.ids == [image_id]
    assert dataset[0]["mask"].tolist() == [[255, 0, 255], [11, 80, 170]]
    with pytest.raises(FileNotFoundError, match="imageLists/test.txt"):
        build_dataset("cocostuff", tmp_path, "test", version="10k")
    with pytest.raises(ValueError, match="version"):
        build_dataset("cocostuff", tmp_path, "train", version="20k")


# ---------------------------------------------------------------------------------------- PASCAL-Context
def context_fixture(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2010"
    write_image(voc / "JPEGImages" / "2008_000002.jpg", 2, 2)
    write_grey(voc / "SegmentationClassContext" / "2008_000002.png", [[0, 1], [59, 37]])
    (voc / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000002\n")
    return root


def test_pascal_context_59_and_60(tmp_path):
    context_fixture(tmp_path)
    dataset = build_dataset("pascal_context", tmp_path, "val")  # 59: background ignored
    assert dataset.num_classes == 59 and not dataset.has_background
    item = dataset[0]
    assert item["mask"].tolist() == [[255, 0], [58, 36]]
    assert tags_of(item) == [0, 36, 58] and dataset.class_names[36] == "person"
    dataset = build_dataset("pascal_context", tmp_path / "VOCdevkit" / "VOC2010", "val", num_classes=60)
    assert dataset.num_classes == 60 and dataset.has_background and dataset.class_names[0] == "background"
    item = dataset[0]
    assert item["mask"].tolist() == [[0, 1], [59, 37]]
    assert tags_of(item) == [0, 36, 58]  # tag j = class j + 1
    with pytest.raises(ValueError, match="59 or 60"):
        build_dataset("pascal_context", tmp_path, "val", num_classes=459)


def test_pascal_context_wrong_root_names_the_script(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_pascal_context.py"):
        build_dataset("pascal_context", tmp_path, "train")
    context_fixture(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"SegmentationContext/train.txt.*prepare_pascal_context.py"):
        build_dataset("pascal_context", tmp_path, "train")


# ---------------------------------------------------------------------------------------- CamVid
def test_camvid_segnet_layout_with_foreign_prefix(tmp_path):
    write_image(tmp_path / "test" / "0001TP_008550.png", 2, 3)
    write_grey(tmp_path / "testannot" / "0001TP_008550.png", [[0, 10, 11], [3, 11, 5]])
    write_image(tmp_path / "test" / "Seq05VD_f00000.png", 2, 3)
    write_grey(tmp_path / "testannot" / "Seq05VD_f00000.png", [[1, 1, 1], [1, 1, 1]])
    (tmp_path / "test.txt").write_text(
        "/SegNet/CamVid/test/0001TP_008550.png /SegNet/CamVid/testannot/0001TP_008550.png\n"
        "/home/someone/data/camvid/test/Seq05VD_f00000.png /home/someone/data/camvid/testannot/Seq05VD_f00000.png\n"
    )
    dataset = build_dataset("camvid", tmp_path, "test")
    assert dataset.ids == ["0001TP_008550", "Seq05VD_f00000"] and dataset.num_classes == 11
    assert dataset[0]["mask"].tolist() == [[0, 10, 255], [3, 255, 5]]
    assert tags_of(dataset[0]) == [0, 3, 5, 10] and tags_of(dataset[1]) == [1]
    with pytest.raises(FileNotFoundError, match=r"val\.txt.*SegNet"):
        build_dataset("camvid", tmp_path, "val")


# ---------------------------------------------------------------------------------------- configs
# The README's "Smoke runs" line: any GPU config of a fully supervised benchmark, CPU-sized.
SMOKE = [
    "seg.backbone=resnet18", "seg.pretrained=none", "seg.sync_bn=false", "seg.iterations=20", "seg.batch_size=2",
    "seg.crop_size=128", "seg.val_interval=20", "seg.eval_scales=[1.0]", "seg.eval_flip=false", "data.num_workers=0",
]  # fmt: skip
FIXTURES = {"cityscapes": cityscapes_fixture, "ade20k": ade20k_fixture, "cocostuff": cocostuff_fixture,
            "pascal_context": context_fixture}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_benchmark_config_reads_its_dataset(name, tmp_path):
    config_file = Path(__file__).resolve().parents[1] / "rca" / "configs" / f"{name}.yaml"
    config = load_config(config_file)
    assert config.data.name == name and config.seg.labels == "gt" and config.seg.pretrained == "imagenet"
    smoke = load_config(config_file, SMOKE + [f"data.root={tmp_path}"])
    assert smoke.seg.backbone == "resnet18" and smoke.seg.iterations == 20
    data = smoke.data
    dataset = build_dataset(data.name, FIXTURES[name](tmp_path), data.val_split, **data.options)
    assert len(dataset) >= 1 and dataset[0]["mask"].shape == dataset[0]["image"].shape[:2]
