"""The dataset checker: planted problems are all found; the real shared sets pass (skipped when absent)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rca.config import load_config
from rca.data import build_dataset
from rca.data.check import check_split, format_report

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _folder_fixture(root: Path, broken: bool) -> None:
    """Folder-layout set of 2x3 images; with ``broken``, one item per kind of problem."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("sky\nroad\n")
    ids = ["good", "nomask", "corrupt", "small", "badvalue", "good"] if broken else ["good"]
    (root / "train.txt").write_text("\n".join(ids) + "\n")
    for image_id in dict.fromkeys(ids):
        Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(root / "images" / f"{image_id}.png")
        mask = np.array([[0, 1, 1], [255, 1, 1]], np.uint8)
        if image_id == "small":
            mask = mask[:1]
        if image_id == "badvalue":
            mask[0, 0] = 7
        if image_id != "nomask":
            Image.fromarray(mask, mode="L").save(root / "labels" / f"{image_id}.png")
    if broken:
        (root / "images" / "corrupt.png").write_bytes(b"not a png")


def test_check_split_finds_every_planted_problem(tmp_path):
    _folder_fixture(tmp_path, broken=True)
    report = check_split(build_dataset("folder", tmp_path, "train"), "train")
    assert (report.items, report.images, report.masks) == (6, 5, 5)
    problems = "\n".join(report.problems)
    assert len(report.problems) == 5, problems
    assert "good: listed more than once" in problems
    assert f"nomask: mask unreadable (BadItemError: cannot read label image {tmp_path / 'labels' / 'nomask.png'}: " \
           "no such file" in problems
    assert f"corrupt: image unreadable (BadItemError: cannot read image {tmp_path / 'images' / 'corrupt.png'}: " \
           "not an image file PIL can decode" in problems
    assert "small: " in problems and "mask is 1x3 but image is 2x3" in problems
    assert "badvalue: " in problems and "mask values [7]" in problems
    # readable masks: good x2, corrupt and badvalue (full), small (first row only); the 7 is not counted
    assert report.histogram.tolist() == [1 + 1 + 1 + 1 + 0, 4 + 4 + 4 + 2 + 4] and report.ignored == 4
    text = format_report(report, ["sky", "road"])
    assert "6 listed, 5 images and 5 masks read, 5 problem(s)" in text and "1 road" in text


def test_check_dataset_script_exit_codes(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "scripts/check_dataset.py", *args], cwd=REPO, capture_output=True, text=True,
            env={"PYTHONPATH": str(REPO), "PATH": "", "OMP_NUM_THREADS": "1"},
        )  # fmt: skip

    good, bad = tmp_path / "good", tmp_path / "bad"
    _folder_fixture(good, broken=False)
    _folder_fixture(bad, broken=True)
    done = run("--name", "folder", "--root", str(good), "--split", "train", "--option", "has_background=true")
    assert done.returncode == 0 and "no problems found" in done.stdout and "1 road" in done.stdout, done.stderr
    done = run("--name", "folder", "--root", str(bad), "--split", "train", "val", "--workers", "2")
    assert done.returncode == 1
    assert "6 problem(s)" in done.stderr  # 5 in train, 1 for the missing val list
    assert "split train: badvalue:" in done.stderr and "split val: cannot open the dataset" in done.stderr
    assert "val.txt" in done.stderr
    done = run("--config", str(REPO / "rca/configs/camvid.yaml"), "--set", f"data.root={tmp_path / 'nowhere'}")
    assert done.returncode == 1 and "CamVid root not found" in done.stderr


# ---------------------------------------------------------------------------------------- real data
REAL = {  # config, shared folder, {split: images}
    "camvid": ("camvid.yaml", "camvid", {"train": 367, "val": 101}),
    "coco_mini": ("coco_mini.yaml", "coco_mini", {"train2017": 160}),
    "msrc": ("msrc.yaml", "msrc_v2", {"train": 360, "val": 60}),
    "voc12_mini": ("voc12.yaml", "voc12_mini", {"train": 4, "train_aug": 4}),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_sets_pass_the_checker(name):
    config_file, folder, splits = REAL[name]
    root = DATA / folder
    if not root.is_dir():
        pytest.skip(f"real data {root} not present")
    data = load_config(REPO / "rca" / "configs" / config_file, [f"data.root={root}"]).data
    for split, count in splits.items():
        dataset = build_dataset(data.name, data.root, split, **data.options)
        report = check_split(dataset, split)
        assert report.problems == []
        assert report.items == report.images == report.masks == count
        assert report.histogram.sum() > 0 and (report.histogram > 0).sum() >= 2
