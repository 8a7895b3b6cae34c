"""Bad inputs at the entry points: one line naming the file or config key, exit status 2, no traceback
unless ``--debug`` (:mod:`rca.errors`); ``--skip-bad`` goes on past unreadable images
(:mod:`rca.data.skip`); a non-finite loss stops training and keeps the last good checkpoint.

Each bad input is built in ``tmp_path`` from a tiny folder dataset (8 JPEGs of 32x32, a square on a
background, 2 classes) and a config shrunk to seconds (ResNet-18 from scratch, epochs of two
iterations). The stages run in-process through :func:`rca.errors.run_cli`, as their ``__main__``
does; every entry point's ``__main__`` block is run too, and ``infer.py`` once as a subprocess.
``docs/errors.md`` lists these inputs with the message each one gives; each row names its case here.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from rca.config import ConfigError
from rca.data import build_dataset
from rca.data.skip import SkipBad, read_skipped
from rca.engine.checkpoint import load_checkpoint
from rca.errors import EXIT_REFUSED, BadItemError, error_message, run_cli
from rca.io import load_label_png
from stages import gen_labels, infer, train_cls, train_seg

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
IDS = [f"img{i}" for i in range(8)]



def make_dataset(root: Path) -> Path:
    """A folder dataset (:mod:`rca.data.folder`): ``images/<id>.jpg`` with a bright 12x12 square on a
    dark background, ``labels/<id>.png`` (0 background, 1 square), ``classes.txt``, ``train.txt``."""
    rng = np.random.default_rng(0)
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
    for name in IDS:
        mask = np.zeros((SIZE, SIZE), np.uint8)
        top, left = rng.integers(0, SIZE - 12, size=2)
        mask[top:top + 12, left:left + 12] = 1
        image = np.where(mask[..., None] == 1, 210, 40) + rng.integers(0, 30, (SIZE, SIZE, 3))
        Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"{name}.jpg", quality=95)
        Image.fromarray(mask).save(root / "labels" / f"{name}.png")
    (root / "classes.txt").write_text("background\nsquare\n")
    (root / "train.txt").write_text("\n".join(IDS) + "\n")
    return root


def write_config(path: Path, root: Path) -> Path:
    """demo.yaml shrunk to seconds on :func:`make_dataset`'s folder: no val split, one epoch of two
    iterations for the classifier, two iterations of DeepLab."""
    tree = yaml.safe_load((REPO / "rca" / "configs" / "demo.yaml").read_text())
    tree["data"] = {"name": "folder", "root": str(root), "train_split": "train", "val_split": None,
                    "label_split": "train", "options": {"image_ext": ".jpg", "has_background": True},
                    "num_workers": 0}
    tree["cls"].update(method="cam", crop_size=SIZE, resize_long=[SIZE, SIZE], batch_size=4, epochs=1, log_interval=1)
    tree["labels"].update(scales=[1.0], flip=False, crf="none")
    tree["seg"].update(iterations=2, batch_size=4, crop_size=SIZE, val_interval=2, log_interval=1)
    path.write_text(yaml.safe_dump(tree))
    return path


def truncate(path: Path) -> None:
    """Cut a file to half its bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def run(capsys, stage, *argv) -> tuple[int, str]:
    """Run ``stage.main`` as its ``__main__`` does; its exit status and what it wrote to stderr."""
    capsys.readouterr()
    status = run_cli(stage.main, [str(a) for a in argv])
    return status, capsys.readouterr().err


def error_line(err: str, *fragments) -> str:
    """The one ``error`` line of ``err``; asserts there is exactly one, no traceback, and every fragment in it."""
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert str(fragment) in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The three stages once on the clean dataset: a classifier and a segmentation checkpoint."""
    base = tmp_path_factory.mktemp("trained")
    root, work = make_dataset(base / "data"), base / "run"
    common = ["--config", str(write_config(base / "mini.yaml", root)), "--work-dir", str(work), "--device", "cpu"]
    for stage in (train_cls, gen_labels, train_seg):
        assert stage.main(common) == 0
    return SimpleNamespace(root=root, cls=work / "cls" / "best.pt", seg=work / "seg" / "best.pt")


@pytest.fixture
def bench(trained, tmp_path):
    """A fresh copy of the dataset and its config in ``tmp_path``, next to the trained checkpoints."""
    root = Path(shutil.copytree(trained.root, tmp_path / "data"))
    config = write_config(tmp_path / "mini.yaml", root)
    return SimpleNamespace(
        root=root, tmp=tmp_path, work=tmp_path / "run", cls=trained.cls, seg=trained.seg,
        args=lambda *extra: ["--config", config, "--work-dir", tmp_path / "run", "--device", "cpu", *extra],
        infer=lambda checkpoint, images=root / "images": ["--checkpoint", checkpoint, "--input", images,
                                                          "--output", tmp_path / "out", "--device", "cpu"],
    )


# ---- every bad input: (stage, arguments, fragments of the one line) -----------------------------------------
def truncated_image(b, workers=0):
    path = b.root / "images" / "img3.jpg"
    truncate(path)
    return train_cls, b.args("--set", f"data.num_workers={workers}"), ["cannot read image", path, "--skip-bad"]


def truncated_image_in_a_loader_worker(b):
    return truncated_image(b, workers=1)


def not_an_image(b):
    path = b.root / "images" / "img3.jpg"
    path.write_text("not a JPEG")
    return train_cls, b.args(), ["cannot read image", path]


def missing_image(b):
    (b.root / "images" / "img3.jpg").unlink()
    return train_cls, b.args(), ["no image", "img3", "--skip-bad"]


def mask_of_another_size(b):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(b.root / "labels" / "img2.png")
    return train_cls, b.args(), ["'img2'", "mask is 16x16 but image is 32x32"]


def label_value_out_of_range(b):
    mask = load_label_png(b.root / "labels" / "img2.png").astype(np.uint8)
    mask[0, 0] = 7
    Image.fromarray(mask).save(b.root / "labels" / "img2.png")
    return train_cls, b.args(), ["'img2'", "mask values [7]", "0..1"]


def missing_dataset_root(b):
    return train_cls, b.args("--set", f"data.root={b.tmp / 'nowhere'}"), ["dataset root not found", "nowhere",
                                                                          "data.root"]


def empty_split(b):
    (b.root / "train.txt").write_text("\n")
    return train_cls, b.args(), [b.root / "train.txt", "lists no images"]


def split_smaller_than_a_batch(b):
    return train_cls, b.args("--set", "cls.batch_size=16"), ["cls.batch_size=16", "8 usable images", "'train'"]


def unknown_config_key(b):
    return train_cls, b.args("--set", "cls.lrr=0.1"), ["unknown config key cls.lrr"]


def bad_config_value(b):
    return train_cls, b.args("--set", "cls.lr=fast"), ["cls.lr: expected float, got 'fast'"]


def non_finite_config_value(b):
    return train_cls, b.args("--set", "cls.lr=.nan"), ["cls.lr: expected a finite number"]


def missing_config_file(b):
    return train_cls, ["--config", b.tmp / "nowhere.yaml"], ["config file", "nowhere.yaml", "not found"]


def invalid_yaml(b):
    (b.tmp / "broken.yaml").write_text("cls: [1,\nseg: 2\n")
    return train_cls, ["--config", b.tmp / "broken.yaml"], ["broken.yaml: invalid YAML"]


def corrupt_checkpoint(b):
    (b.tmp / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a zip archive" * 20)
    return infer, b.infer(b.tmp / "corrupt.pt"), ["cannot read checkpoint", "corrupt.pt", "stages/train_seg.py"]


def truncated_checkpoint(b):
    path = Path(shutil.copy(b.seg, b.tmp / "truncated.pt"))
    truncate(path)
    return infer, b.infer(path), ["cannot read checkpoint", "truncated.pt", "stages/train_seg.py"]


def checkpoint_with_pickled_objects(b):
    torch.save({"model": {}, "palette": np.zeros((256, 3), np.uint8)}, b.tmp / "pickled.pt")
    return infer, b.infer(b.tmp / "pickled.pt"), ["pickled.pt", "pickled Python objects", "weights_only=True"]


def corrupt_last_checkpoint_to_resume(b):
    (b.work / "cls").mkdir(parents=True)
    (b.work / "cls" / "last.pt").write_bytes(b"\x00" * 64)
    return train_cls, b.args("--resume"), ["cannot read checkpoint", "last.pt", "--overwrite"]


def missing_checkpoint(b):
    return infer, b.infer(b.tmp / "nowhere.pt"), ["nowhere.pt not found", "--checkpoint", "stages/train_seg.py"]


def classifier_checkpoint_to_infer(b):
    return infer, b.infer(b.cls), ["is a classifier checkpoint (backbone resnet18, written by stages/train_cls.py)",
                                   "needs a segmentation checkpoint", "stages/train_seg.py"]


def classifier_checkpoint_to_eval_only(b):
    return train_seg, b.args("--set", "data.val_split=train", "--eval-only", "--checkpoint", b.cls), [
        "is a classifier checkpoint", "needs a segmentation checkpoint"]


def segmentation_checkpoint_to_gen_labels(b):
    return gen_labels, b.args("--checkpoint", b.seg), ["is a segmentation checkpoint", "needs a classifier "
                                                       "checkpoint", "stages/train_cls.py"]


def classifier_checkpoint_of_another_version(b):
    state = torch.load(b.cls, weights_only=True)
    state["model"]["fuse.weight"] = state["model"].pop("coarse_head.weight")  # as a renamed layer leaves it
    torch.save(state, b.tmp / "old.pt")
    return gen_labels, b.args("--checkpoint", b.tmp / "old.pt"), [
        "old.pt does not fit the model", "coarse_head.weight", "fuse.weight", "another version",
        "stages/train_cls.py --overwrite"]


def unreadable_input_of_infer(b):
    path = b.root / "images" / "img3.jpg"
    truncate(path)
    return infer, b.infer(b.seg, path), ["cannot read image", path, "--input"]


def no_pseudo_labels_yet(b):
    return train_seg, b.args(), ["8 of 8 pseudo labels missing", "stages/gen_labels.py"]


def bad_shard(b):
    return gen_labels, b.args("--shard", "2/2"), ["--shard '2/2'", "0 <= i < n"]


BAD_INPUTS = [truncated_image, truncated_image_in_a_loader_worker, not_an_image, missing_image, mask_of_another_size,
              label_value_out_of_range, missing_dataset_root, empty_split, split_smaller_than_a_batch,
              unknown_config_key, bad_config_value, non_finite_config_value, missing_config_file, invalid_yaml,
              corrupt_checkpoint, truncated_checkpoint, checkpoint_with_pickled_objects,
              corrupt_last_checkpoint_to_resume, missing_checkpoint,
              classifier_checkpoint_to_infer, classifier_checkpoint_to_eval_only,
              segmentation_checkpoint_to_gen_labels, classifier_checkpoint_of_another_version,
              unreadable_input_of_infer, no_pseudo_labels_yet, bad_shard]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda case: case.__name__)
def test_a_bad_input_gives_one_line_and_exit_status_2(case, bench, capsys):
    stage, argv, fragments = case(bench)
    status, err = run(capsys, stage, *argv)
    assert status == EXIT_REFUSED
    error_line(err, *fragments)


def test_debug_adds_the_traceback(bench, capsys):
    stage, argv, fragments = truncated_image(bench)
    status, err = run(capsys, stage, *argv, "--debug")
    assert status == EXIT_REFUSED
    assert "Traceback (most recent call last)" in err and "rca.errors.BadItemError" in err
    assert err.rstrip().splitlines()[-1].startswith("error: cannot read image")


def test_every_entry_point_reports_through_run_cli(bench, tmp_path, monkeypatch, capsys):
    """The ``__main__`` block of every stage and script: exit status 2 and one line for a bad input."""
    cases = {
        "stages/train_cls.py": ["--set", "cls.lrr=1"], "stages/gen_labels.py": ["--set", "cls.lrr=1"],
        "stages/train_seg.py": ["--set", "cls.lrr=1"], "scripts/summary.py": ["--set", "cls.lrr=1"],
        "scripts/benchmark.py": ["--set", "cls.lrr=1"], "stages/infer.py": bench.infer(tmp_path / "none.pt"),
        "scripts/check_dataset.py": ["--config", tmp_path / "none.yaml"], "scripts/report.py": [tmp_path / "none"],
        "scripts/prepare_voc.py": ["--voc", tmp_path, "--sbd", tmp_path],
        "scripts/prepare_coco.py": ["--root", tmp_path, "--split", "train2017"],
        "scripts/prepare_pascal_context.py": ["--voc2010", tmp_path, "--labels", tmp_path],
    }
    for script, argv in cases.items():
        monkeypatch.setattr(sys, "argv", [script, *map(str, argv)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(REPO / script), run_name="__main__")
        assert exit_info.value.code == EXIT_REFUSED, script
        error_line(capsys.readouterr().err)


def test_infer_as_a_subprocess_prints_one_line_for_a_corrupt_checkpoint(bench):
    stage, argv, fragments = corrupt_checkpoint(bench)
    result = subprocess.run([sys.executable, str(REPO / "stages" / "infer.py"), *map(str, argv)], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == EXIT_REFUSED
    assert result.stderr.count("\n") == 1
    error_line(result.stderr, *fragments)


# ---- run_cli itself ----------------------------------------------------------------------------------------
def _raise(error):
    def main(argv):
        raise error
    return main


def test_a_bug_keeps_its_traceback():
    with pytest.raises(KeyError):
        run_cli(_raise(KeyError("model")), [])


def test_under_torchrun_rank_0_reports_shared_errors_and_each_rank_its_own(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    assert run_cli(_raise(ConfigError("cls.lr: expected float")), []) == EXIT_REFUSED
    assert capsys.readouterr().err == ""  # every rank meets a config error: rank 0 says it
    assert run_cli(_raise(BadItemError("cannot read image a.jpg")), []) == EXIT_REFUSED
    assert capsys.readouterr().err == "error (rank 1): cannot read image a.jpg\n"
    monkeypatch.setenv("RANK", "0")
    assert run_cli(_raise(ConfigError("cls.lr: expected float")), []) == EXIT_REFUSED
    assert capsys.readouterr().err == "error: cls.lr: expected float\n"


def test_the_message_of_an_error_from_a_loader_worker_is_its_own_line():
    rewrapped = BadItemError("Caught BadItemError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                             "call last):\n  File \"x.py\", line 1, in f\nrca.errors.BadItemError: cannot read image "
                             "a.jpg: truncated; fix it\n")
    assert error_message(rewrapped) == "cannot read image a.jpg: truncated; fix it"


# ---- --skip-bad -------------------------------------------------------------------------------------------
def test_skip_bad_replaces_an_unusable_item_by_the_next_and_lists_it_once(bench):
    truncate(bench.root / "images" / "img3.jpg")
    truncate(bench.root / "images" / "img7.jpg")
    dataset = build_dataset("folder", bench.root, "train", image_ext=".jpg", has_background=True)
    with pytest.raises(BadItemError, match="img3.jpg"):
        dataset[3]
    log = bench.tmp / "skipped.txt"
    skipping = SkipBad(dataset, log)
    assert len(skipping) == 8 and skipping.class_names == ["background", "square"]
    assert [skipping[i]["id"] for i in (2, 3, 3, 7)] == ["img2", "img4", "img4", "img0"]  # img7 wraps to img0
    assert list(read_skipped(log)) == ["img3", "img7"]
    assert all("cannot read image" in reason for reason in read_skipped(log).values())


def test_skip_bad_trains_and_labels_without_an_unreadable_image(bench, capsys):
    truncate(bench.root / "images" / "img3.jpg")
    status, err = run(capsys, train_cls, *bench.args("--skip-bad"))
    assert status == 0, err
    assert list(read_skipped(bench.work / "cls" / "skipped.txt")) == ["img3"]

    status, err = run(capsys, gen_labels, *bench.args())  # without --skip-bad: the first bad image stops it
    assert status == EXIT_REFUSED
    error_line(err, bench.root / "images" / "img3.jpg")
    status, err = run(capsys, gen_labels, *bench.args("--skip-bad"))
    assert status == 0, err
    assert list(read_skipped(bench.work / "labels" / "skipped.txt")) == ["img3"]
    assert sorted(p.stem for p in (bench.work / "labels").glob("*.png")) == [i for i in IDS if i != "img3"]
    metrics = json.loads((bench.work / "labels" / "metrics.json").read_text())
    assert metrics["num_scored"] == 7 and metrics["num_skipped"] == 1
    for path in (bench.work / "cams").glob("*.npz"):  # CAM files need no pickle
        with np.load(path, allow_pickle=False) as cams:
            assert cams["cams"].dtype == np.float16 and cams["classes"].tolist() == [1]

    status, err = run(capsys, train_seg, *bench.args())  # the image gen_labels skipped has no pseudo label
    assert status == EXIT_REFUSED
    error_line(err, "1 of 8 pseudo labels missing", "img3.png", "--skip-bad")
    status, err = run(capsys, train_seg, *bench.args("--skip-bad"))
    assert status == 0, err
    assert load_checkpoint(bench.work / "seg" / "last.pt", kind="segmentation")["done"] == 2


# ---- non-finite losses ---------------------------------------------------------------------------------------
def _nan_from_call(monkeypatch, name: str, first_bad: int) -> None:
    """Make ``torch.nn.functional.<name>`` return NaN from its ``first_bad``-th call (1-based) on."""
    real, calls = getattr(torch.nn.functional, name), []

    def patched(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) >= first_bad else loss

    monkeypatch.setattr(torch.nn.functional, name, patched)


def test_a_nan_loss_stops_train_cls_and_keeps_the_last_good_checkpoint(bench, capsys, monkeypatch):
    _nan_from_call(monkeypatch, "multilabel_soft_margin_loss", first_bad=4)  # one call a step: epoch 1, step 2
    status, err = run(capsys, train_cls, *bench.args("--set", "cls.epochs=2"))
    assert status == EXIT_REFUSED
    error_line(err, "loss term 'cls' is nan at epoch 1, iteration 2/2", "cls.lr")
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(bench.work / "cls" / name, kind="classifier")
        assert state["done"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_nan_loss_stops_train_seg_and_keeps_the_last_good_checkpoint(bench, capsys, monkeypatch):
    _nan_from_call(monkeypatch, "cross_entropy", first_bad=3)  # one call a step: iteration 3 of 4
    status, err = run(capsys, train_seg, *bench.args("--set", "seg.labels=gt", "--set", "seg.iterations=4"))
    assert status == EXIT_REFUSED
    error_line(err, "the loss is nan at iteration 3/4", "seg.lr")
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(bench.work / "seg" / name, kind="segmentation")
        assert state["done"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())
