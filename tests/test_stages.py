"""End-to-end tests of the entry points: stages/*.py, scripts/run_all.sh, scripts/summary.py.

One miniature experiment (synthetic shapes, 16 images of 48x48, 2 foreground classes, a ResNet-18
trained for 2 epochs, DeepLab-v2 for 4 iterations) is run once by ``scripts/run_all.sh`` (the
``pipeline`` fixture); the other tests probe each stage in-process (``stages.<name>.main(argv)``)
against its outputs: resume, skip and shard rules, the files written and the scores in them,
recomputed here from those files. One more run of ``run_all.sh`` uses a VOC-layout copy of the data
whose segmentation training split is a strict superset of the scored split.

Torch runs on one thread here: on a busy 2-core machine the intra-op thread pool spins waiting for
a core and a 48x48 forward pass gets 10-30x slower with two threads than with one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from rca.config import SegConfig, config_to_dict, load_config
from rca.data import build_dataset, make_palette
from rca.data.transforms import eval_transform
from rca.engine.checkpoint import load_checkpoint, save_checkpoint
from rca.io import load_label_png, load_npz
from rca.metrics import ConfusionMatrix, average_precision
from rca.models.classifier import build_classifier
from rca.models.deeplab import build_deeplab, deeplab_args, deeplab_param_groups
from rca.pseudo_labels import constant_background
from rca.segment import predict_probs, segmentation_loss
from stages import gen_labels, infer, train_cls, train_seg

from helpers import write_voc

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
NUM_IMAGES, IMAGE_SIZE, NUM_FOREGROUND = 16, 48, 2
CLASS_NAMES = ["background", "disc", "square"]


class Interrupted(Exception):
    """Raised by a patched ``save_run`` to stop a stage right after its first checkpoint."""


def _interrupt_after_first_checkpoint(monkeypatch, stage) -> None:
    """Make ``stage`` crash right after it has written its first ``metrics.json`` and ``last.pt``."""
    real_save_run = stage.save_run

    def save_then_crash(*args, **kwargs):
        real_save_run(*args, **kwargs)
        raise Interrupted

    monkeypatch.setattr(stage, "save_run", save_then_crash)


def _mtimes(folder: Path, suffixes=(".pt", ".npz", ".png", ".json")) -> dict[str, int]:
    """``{relative path: mtime_ns}`` of the stage outputs under ``folder`` (logs and configs left out)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))
            if p.suffix in suffixes}


def _miou_by_hand(predictions: list[np.ndarray], masks: list[np.ndarray], num_classes: int) -> float:
    """mIoU in percent from a numpy confusion matrix: mean IoU over classes in the masks or predictions."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for prediction, mask in zip(predictions, masks):
        scored = mask != 255
        np.add.at(matrix, (mask[scored], prediction[scored]), 1)
    true_positive = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - true_positive
    return float(np.mean(100 * true_positive[union > 0] / union[union > 0]))


def _dataset(split: str, transform=None):
    return build_dataset("synthetic", "unused", split, transform=transform, num_images=NUM_IMAGES,
                         image_size=IMAGE_SIZE, num_classes=NUM_FOREGROUND)


# ---- fixtures: the miniature config and one run of the whole pipeline -------------------------------

@pytest.fixture(scope="module")
def mini_config(tmp_path_factory) -> Path:
    """demo.yaml shrunk to seconds: 16 images of 48x48, 2 epochs; every region enters the memory bank
    (write_threshold 0) so that the 2nd epoch trains with the contrast loss."""
    tree = yaml.safe_load((REPO / "rca" / "configs" / "demo.yaml").read_text())
    tree["data"].update(options={"num_images": NUM_IMAGES, "image_size": IMAGE_SIZE, "num_classes": NUM_FOREGROUND},
                        num_workers=0)
    tree["cls"].update(batch_size=8, epochs=2, crop_size=48, resize_long=[40, 56], memory_size=8, num_centres=2,
                       embed_dim=16, contrast_warmup_epochs=1, write_threshold=0.0, log_interval=1)
    tree["labels"].update(scales=[1.0])
    tree["seg"].update(iterations=4, batch_size=4, crop_size=48, val_interval=2, log_interval=1)
    path = tmp_path_factory.mktemp("config") / "mini.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _run_all(config: Path, work_dir: Path, crf_processes: int | None = None) -> subprocess.CompletedProcess:
    """``scripts/run_all.sh``; ``crf_processes`` sets ``CRF_PROCESSES`` (``None``: run_all's default, 2)."""
    env = {name: value for name, value in os.environ.items() if name != "CRF_PROCESSES"}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1")
    if crf_processes is not None:
        env["CRF_PROCESSES"] = str(crf_processes)
    return subprocess.run(["bash", str(REPO / "scripts" / "run_all.sh"), str(config), "--work-dir", str(work_dir)],
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def pipeline(mini_config, tmp_path_factory):
    """``scripts/run_all.sh`` once on the miniature config: ``(work_dir, stdout)``."""
    work_dir = tmp_path_factory.mktemp("pipeline")
    result = _run_all(mini_config, work_dir)
    assert result.returncode == 0, f"run_all.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return work_dir, result.stdout


# ---- scripts/run_all.sh and scripts/summary.py -----------------------------------------------------
def test_run_all_runs_every_stage_and_prints_the_summary(pipeline):
    work_dir, stdout = pipeline
    for stage in ("train_cls", "gen_labels", "train_seg", "summary"):
        assert f"=== {stage}" in stdout
    assert "CRF psa, 2 process(es)" in stdout  # run_all's default CRF_PROCESSES
    for name in ("last.pt", "best.pt", "metrics.json", "config.yaml"):
        assert (work_dir / "cls" / name).is_file()
        assert (work_dir / "seg" / name).is_file()
    ids = _dataset("train").ids
    assert sorted(p.stem for p in (work_dir / "labels").glob("*.png")) == sorted(ids)
    assert sorted(p.stem for p in (work_dir / "cams").glob("*.npz")) == sorted(ids)

    # the summary table shows the numbers of the three metrics.json files
    cls, labels, seg = (json.loads((work_dir / part / "metrics.json").read_text()) for part in ("cls", "labels", "seg"))
    assert cls["epochs_done"] == 2 and seg["iterations_done"] == 4
    summary = stdout[stdout.index("=== summary"):]
    for row, value in [("classifier val tag mAP", cls["best_val_map"]), ("CAM seed mIoU", labels["cam_seed"]["miou"]),
                       ("CAM seed + CRF mIoU", labels["cam_seed_crf"]["miou"]),
                       ("oracle: best CAM seed mIoU", labels["oracle_sweep"]["best_miou"]),
                       ("pseudo-label mIoU (strict)", labels["pseudo_label"]["strict_miou"]),
                       ("segmentation val mIoU", seg["best_val_miou"])]:
        line = next(line for line in summary.splitlines() if row in line)
        assert f"{value:6.2f}" in line
    # and the report of the run, with gen_labels' sample panels
    assert f"report: {work_dir / 'report.html'}" in summary and (work_dir / "report.md").is_file()
    assert len(list((work_dir / "vis").glob("*.png"))) == 8
    assert "vis/" in (work_dir / "report.md").read_text()


def test_run_all_second_run_skips_everything(pipeline, mini_config):
    work_dir = pipeline[0]
    def outputs():  # the stages' outputs; summary.py redraws the report's charts each time
        return {name: mtime for name, mtime in _mtimes(work_dir).items() if not name.startswith("report/")}

    before = outputs()
    result = _run_all(mini_config, work_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is finished" in result.stdout and "=== summary" in result.stdout
    assert outputs() == before


# ---- stages/train_cls.py -------------------------------------------------------------------------
def _cls_args(config: Path, work_dir: Path, *extra: str) -> list[str]:
    return ["--config", str(config), "--work-dir", str(work_dir), "--device", "cpu", *extra]


def test_train_cls_resume_equals_the_uninterrupted_run(pipeline, mini_config, tmp_path, monkeypatch):
    """Crash after epoch 0, resume: the final weights, memory bank and scores equal run_all's run, and
    the saved centres are the k-means centres of the bank at the start of the last epoch.

    Both runs have ``data.num_workers: 0`` and one torch thread, so CPU results are bitwise equal.
    (A run trained with ``cls.epochs=1`` and resumed with ``cls.epochs=2`` cannot equal a 2-epoch run:
    the poly LR of its first epoch decays to 0 over 1 epoch. The stage refuses that resume, see
    ``test_train_cls_refuses_a_resume_with_another_schedule``.)
    """
    straight = load_checkpoint(pipeline[0] / "cls" / "last.pt")
    _interrupt_after_first_checkpoint(monkeypatch, train_cls)
    with pytest.raises(Interrupted):
        train_cls.main(_cls_args(mini_config, tmp_path))
    monkeypatch.undo()
    last = tmp_path / "cls" / "last.pt"
    after_epoch_0 = load_checkpoint(last)
    assert after_epoch_0["epoch"] == 0

    mtime = last.stat().st_mtime_ns
    assert train_cls.main(_cls_args(mini_config, tmp_path)) == 2  # unfinished: --resume or --overwrite
    assert last.stat().st_mtime_ns == mtime

    assert train_cls.main(_cls_args(mini_config, tmp_path, "--resume")) == 0
    resumed = load_checkpoint(last)
    assert resumed["epoch"] == 1
    assert resumed["model"].keys() == straight["model"].keys()
    for name, tensor in straight["model"].items():  # includes the memory bank and the k-means centres
        assert torch.equal(resumed["model"][name], tensor), name
    for key in ("train_loss", "train_cls", "train_contrast", "val_map"):
        assert [r[key] for r in resumed["history"]] == [r[key] for r in straight["history"]], key
    assert straight["history"][1]["train_contrast"] > 0  # the resumed epoch used the memory bank

    # epoch 1 trained with (and saved) the centres of the bank as epoch 0 left it
    model = build_classifier(**after_epoch_0["model_args"])
    model.load_state_dict(after_epoch_0["model"])
    assert not model.centre_valid.any()  # epoch 0 started from an empty bank: no centres
    model.update_centres()
    assert model.centre_valid.any()
    for name in ("centres", "centre_valid"):
        assert torch.equal(resumed["model"][name], getattr(model, name)), name


def test_train_cls_skips_a_finished_run(pipeline, mini_config):
    work_dir = pipeline[0]
    before = _mtimes(work_dir / "cls")
    assert train_cls.main(_cls_args(mini_config, work_dir)) == 0
    assert _mtimes(work_dir / "cls") == before


def test_train_cls_refuses_outputs_of_other_settings(pipeline, mini_config, capsys):
    """A finished run rerun with another cls.lr is refused naming the key (exit 2, nothing written);
    another data.num_workers changes no output, so the run is still just finished."""
    work_dir = pipeline[0]
    before = _mtimes(work_dir / "cls")
    capsys.readouterr()
    assert train_cls.main(_cls_args(mini_config, work_dir, "--set", "cls.lr=0.5")) == 2
    refusal = capsys.readouterr().out
    assert f"cls.lr: {load_config(mini_config).cls.lr} -> 0.5" in refusal and "--overwrite" in refusal and "Traceback" not in refusal
    assert train_cls.main(_cls_args(mini_config, work_dir, "--set", "data.num_workers=1")) == 0
    assert "is finished" in capsys.readouterr().out
    assert _mtimes(work_dir / "cls") == before


def test_train_cls_refuses_a_resume_with_another_schedule(pipeline, mini_config, tmp_path):
    """3 epochs from a finished 2-epoch last.pt would train epoch 2 at the old schedule's LR of 0."""
    (tmp_path / "cls").mkdir()
    shutil.copy(pipeline[0] / "cls" / "last.pt", tmp_path / "cls" / "last.pt")
    before = (tmp_path / "cls" / "last.pt").read_bytes()
    assert train_cls.main(_cls_args(mini_config, tmp_path, "--resume", "--set", "cls.epochs=3")) == 2
    assert (tmp_path / "cls" / "last.pt").read_bytes() == before


def test_train_cls_logs_progress_over_the_whole_run(pipeline, mini_config):
    """With cls.log_interval 1, one line per iteration counted over the whole run (2 epochs x 2
    iterations = 4): the loss terms (their epoch means are the history's), the poly LR after the
    step, s/iter, the run's ETA and the peak memory."""
    line = re.compile(r"train_cls: iter (\d+)/4  loss (\S+)  cls (\S+)  contrast (\S+)  lr (\S+)  "
                      r"\d+\.\d{3} s/iter  eta \d+:\d\d:\d\d  peak \d+ MiB$")
    log = (pipeline[0] / "cls" / "train.log").read_text().splitlines()
    steps = [match.groups() for match in map(line.search, log) if match]
    assert [int(step[0]) for step in steps] == [1, 2, 3, 4]
    lr = load_config(mini_config).cls.lr
    assert [step[4] for step in steps] == [f"{lr * (1 - k / 4) ** 0.9:.2e}" for k in (1, 2, 3, 4)]  # poly LR
    history = json.loads((pipeline[0] / "cls" / "metrics.json").read_text())["history"]
    for epoch, record in enumerate(history):
        for column, key in ((1, "train_loss"), (2, "train_cls"), (3, "train_contrast")):
            logged = [float(step[column]) for step in steps[2 * epoch:2 * epoch + 2]]
            assert np.mean(logged) == pytest.approx(record[key], abs=1e-4), (epoch, key)
    assert float(steps[0][3]) == 0 < float(steps[3][3])  # contrast from epoch 1 (contrast_warmup_epochs)


def test_train_cls_writes_metrics_and_the_resolved_config(pipeline, mini_config):
    out = pipeline[0] / "cls"
    metrics = json.loads((out / "metrics.json").read_text())
    val_maps = [record["val_map"] for record in metrics["history"]]
    assert metrics["epochs_done"] == metrics["epochs"] == 2 and len(val_maps) == 2
    assert all(0 <= v <= 100 for v in val_maps)
    assert metrics["best_val_map"] == max(val_maps)
    assert list(metrics["val_ap_by_class"]) == CLASS_NAMES[1:]
    assert load_config(out / "config.yaml") == load_config(mini_config)
    filled = load_checkpoint(out / "last.pt")["model"]["memory.filled"]  # the memory fill is logged as it is
    assert metrics["history"][-1]["memory_entries"] == int(filled.sum())
    assert metrics["history"][-1]["memory_classes"] == int((filled > 0).sum())
    # aggregation attends to centres from epoch 1 on (epoch 0 starts from an empty bank)
    first, last = metrics["history"]
    assert "attention_entropy" not in first
    valid = load_checkpoint(out / "last.pt")["model"]["centre_valid"]  # the centres epoch 1 trained with
    assert last["attention_centres"] == int(valid.sum()) > 1
    assert 0 < last["attention_entropy_ratio"] <= 1 and 1 / last["attention_centres"] <= last["attention_max_weight"] <= 1
    assert last["attention_entropy_ratio"] == pytest.approx(last["attention_entropy"] / np.log(last["attention_centres"]))
    assert "attention entropy" in (out / "train.log").read_text()

    # best.pt is the best epoch, and its val mAP is the one reported (recomputed here)
    best = load_checkpoint(out / "best.pt")
    assert best["history"][best["epoch"]]["val_map"] == metrics["best_val_map"]
    model = build_classifier(**best["model_args"])
    model.load_state_dict(best["model"])
    model.eval()
    scores, tags = [], []
    with torch.inference_mode():
        for item in _dataset("val", eval_transform()):
            scores.append(torch.sigmoid(model(item["image"][None])["scores"]))
            tags.append(torch.as_tensor(item["tags"])[None])
    assert average_precision(torch.cat(scores), torch.cat(tags)) == pytest.approx(metrics["best_val_map"], abs=1e-4)


# ---- stages/gen_labels.py ------------------------------------------------------------------------
def _labels_args(config: Path, work_dir: Path, checkpoint: Path, *extra: str) -> list[str]:
    return ["--config", str(config), "--work-dir", str(work_dir), "--checkpoint", str(checkpoint),
            "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def labels_run(pipeline, mini_config, tmp_path_factory):
    """gen_labels in-process (1 worker) from run_all's classifier, into a fresh work dir."""
    work_dir = tmp_path_factory.mktemp("labels")
    args = _labels_args(mini_config, work_dir, pipeline[0] / "cls" / "best.pt")
    assert gen_labels.main(args) == 0
    return work_dir, args, mini_config


def test_gen_labels_writes_one_cam_and_label_per_image(labels_run, pipeline):
    work_dir = labels_run[0]
    dataset = _dataset("train")
    assert sorted(p.stem for p in (work_dir / "cams").glob("*.npz")) == sorted(dataset.ids)
    assert sorted(p.stem for p in (work_dir / "labels").glob("*.png")) == sorted(dataset.ids)
    labels, masks = [], []
    for index, name in enumerate(dataset.ids):
        item = dataset[index]
        saved = load_npz(work_dir / "cams" / f"{name}.npz")
        tagged = 1 + np.flatnonzero(item["tags"])  # label values of the image's tags
        np.testing.assert_array_equal(saved["classes"], tagged)
        assert saved["cams"].dtype == np.float16 and saved["cams"].shape == (len(tagged), IMAGE_SIZE, IMAGE_SIZE)
        assert saved["cams"].min() >= 0 and saved["cams"].max() <= 1
        label = load_label_png(work_dir / "labels" / f"{name}.png")
        assert label.shape == (IMAGE_SIZE, IMAGE_SIZE)
        assert set(np.unique(label)) <= {0, *tagged.tolist()}  # background or a tagged class, no 255
        # run_all made the same labels in a pool of 2 spawned processes
        np.testing.assert_array_equal(label, load_label_png(pipeline[0] / "labels" / f"{name}.png"))
        labels.append(label)
        masks.append(item["mask"])

    metrics = json.loads((work_dir / "labels" / "metrics.json").read_text())
    assert {"cam_seed", "cam_seed_crf", "pseudo_label", "oracle_sweep"} <= metrics.keys()
    assert metrics["label_split"] == metrics["score_split"] == "train"
    assert metrics["num_labelled"] == metrics["num_scored"] == NUM_IMAGES
    assert list(metrics["pseudo_label"]["iou_by_class"]) == CLASS_NAMES
    assert metrics["pseudo_label"]["labelled_fraction"] == 100.0
    miou = _miou_by_hand(labels, masks, len(CLASS_NAMES))
    assert metrics["pseudo_label"]["strict_miou"] == pytest.approx(miou, abs=1e-9)
    assert metrics["pseudo_label"]["lenient_miou"] == pytest.approx(miou, abs=1e-9)
    _check_cam_seed(metrics, work_dir, dataset, load_config(labels_run[2]).labels.bg_threshold)


def _check_cam_seed(metrics: dict, work_dir: Path, dataset, threshold: float) -> None:
    """The headline CAM seed is the configured threshold's, recomputed from the saved CAMs; the oracle
    curve's best point is its maximum."""
    seeds, masks = [], []
    for index, name in enumerate(dataset.ids):
        saved = load_npz(work_dir / "cams" / f"{name}.npz")
        seeds.append(constant_background(saved["cams"], saved["classes"], threshold))
        masks.append(dataset.load_mask(index))
    assert metrics["cam_seed"]["threshold"] == threshold
    assert metrics["cam_seed"]["miou"] == pytest.approx(_miou_by_hand(seeds, masks, len(CLASS_NAMES)), abs=1e-9)
    oracle = metrics["oracle_sweep"]
    assert "oracle" in oracle["note"]
    assert oracle["best_miou"] == max(oracle["curve"].values()) >= metrics["cam_seed"]["miou"] - 1e-9
    assert oracle["curve"][f"{oracle['best_threshold']:.2f}"] == oracle["best_miou"]


def test_gen_labels_confident_rule_scores_strict_and_lenient(labels_run, pipeline, mini_config, tmp_path):
    """IRN's confident rule leaves 255: strict (255 -> background) and lenient (255 dropped) differ, and
    both, the labelled fraction and the CAM seed equal their values recomputed from the files."""
    shutil.copytree(labels_run[0] / "cams", tmp_path / "cams")  # the same CAMs; new labels
    # this classifier's CAMs (max over classes) lie in about [0.5, 1] with median 0.8: thresholds inside
    confident = ["labels.rule=confident", "labels.crf=irn", "labels.fg_threshold=0.85", "labels.low_threshold=0.75"]
    args = _labels_args(mini_config, tmp_path, pipeline[0] / "cls" / "best.pt",
                        *(arg for key in confident for arg in ("--set", key)))
    assert gen_labels.main(args) == 0
    dataset = _dataset("train")
    labels = [load_label_png(tmp_path / "labels" / f"{name}.png") for name in dataset.ids]
    masks = [dataset.load_mask(i) for i in range(len(dataset))]
    unlabelled = sum(int((label == 255).sum()) for label in labels)
    assert 0 < unlabelled < NUM_IMAGES * IMAGE_SIZE ** 2
    metrics = json.loads((tmp_path / "labels" / "metrics.json").read_text())
    pseudo = metrics["pseudo_label"]
    assert pseudo["labelled_fraction"] == pytest.approx(100 * (1 - unlabelled / (NUM_IMAGES * IMAGE_SIZE ** 2)))
    strict = _miou_by_hand([np.where(label == 255, 0, label) for label in labels], masks, len(CLASS_NAMES))
    kept = [(label[label != 255], mask[label != 255]) for label, mask in zip(labels, masks)]
    lenient = _miou_by_hand([k[0] for k in kept], [k[1] for k in kept], len(CLASS_NAMES))
    assert pseudo["strict_miou"] == pytest.approx(strict, abs=1e-9)
    assert pseudo["lenient_miou"] == pytest.approx(lenient, abs=1e-9)
    assert strict != pytest.approx(lenient, abs=1e-6)
    assert metrics["protocol"]["rule"] == "confident" and metrics["protocol"]["crf"] == "irn"
    _check_cam_seed(metrics, tmp_path, dataset, load_config(mini_config).labels.bg_threshold)


def test_gen_labels_second_run_writes_nothing(labels_run):
    work_dir, args, _ = labels_run
    before = _mtimes(work_dir)
    assert gen_labels.main(args) == 0
    assert _mtimes(work_dir) == before


def test_gen_labels_refuses_outputs_of_other_settings(labels_run, capsys):
    """Another labels.bg_threshold is refused naming the key (exit 2, nothing written); other worker
    counts (--crf-processes, data.num_workers) change no output and skip everything."""
    work_dir, args, _ = labels_run
    before = _mtimes(work_dir)
    capsys.readouterr()
    assert gen_labels.main([*args, "--set", "labels.bg_threshold=0.5"]) == 2
    refusal = capsys.readouterr().out
    assert "labels.bg_threshold:" in refusal and "-> 0.5" in refusal and "--overwrite" in refusal
    assert gen_labels.main([*args, "--crf-processes", "2", "--set", "data.num_workers=1"]) == 0
    assert _mtimes(work_dir) == before


def test_gen_labels_redoes_exactly_a_deleted_label(labels_run):
    work_dir, args, _ = labels_run
    deleted = work_dir / "labels" / f"{_dataset('train').ids[3]}.png"
    content = load_label_png(deleted)
    metrics = json.loads((work_dir / "labels" / "metrics.json").read_text())
    before = _mtimes(work_dir)
    deleted.unlink()
    assert gen_labels.main(args) == 0
    after = _mtimes(work_dir)
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {"labels/" + deleted.name, "labels/metrics.json"}  # the label, then the re-scoring
    np.testing.assert_array_equal(load_label_png(deleted), content)
    rescored = json.loads((work_dir / "labels" / "metrics.json").read_text())
    assert rescored["pseudo_label"] == metrics["pseudo_label"] and rescored["cam_seed"] == metrics["cam_seed"]


def test_gen_labels_shards_cover_the_split_and_vis_writes_panels(labels_run, pipeline, mini_config, tmp_path):
    ids = _dataset("train").ids
    checkpoint = pipeline[0] / "cls" / "best.pt"
    assert gen_labels.main(_labels_args(mini_config, tmp_path, checkpoint, "--shard", "0/2")) == 0
    assert sorted(p.stem for p in (tmp_path / "labels").glob("*.png")) == sorted(ids[0::2])
    assert sorted(p.stem for p in (tmp_path / "cams").glob("*.npz")) == sorted(ids[0::2])
    assert not (tmp_path / "labels" / "metrics.json").exists()  # scored once every shard is done

    assert gen_labels.main(_labels_args(mini_config, tmp_path, checkpoint, "--shard", "1/2")) == 0
    assert sorted(p.stem for p in (tmp_path / "labels").glob("*.png")) == sorted(ids)
    for name in ids:
        np.testing.assert_array_equal(load_label_png(tmp_path / "labels" / f"{name}.png"),
                                      load_label_png(labels_run[0] / "labels" / f"{name}.png"))
    sharded = json.loads((tmp_path / "labels" / "metrics.json").read_text())
    whole = json.loads((labels_run[0] / "labels" / "metrics.json").read_text())
    assert sharded["pseudo_label"] == whole["pseudo_label"]

    before = _mtimes(tmp_path)
    assert gen_labels.main(_labels_args(mini_config, tmp_path, checkpoint, "--vis", "2")) == 0
    panels = sorted((tmp_path / "vis").glob("*.png"))
    assert [p.stem for p in panels] == sorted(ids[:2])
    for panel in panels:
        with Image.open(panel) as image:
            assert image.mode == "RGB" and image.height >= IMAGE_SIZE and image.width > 3 * IMAGE_SIZE
    assert {k: v for k, v in _mtimes(tmp_path).items() if not k.startswith("vis/")} == before


@pytest.fixture(scope="module")
def quality_runs(tmp_path_factory) -> dict[str, Path]:
    """Pseudo labels from a briefly trained classifier and from the same classifier untrained.

    The demo's data (96x96, 4 shapes), 96 images, a ResNet-18 CAM classifier trained for 3 epochs of
    batch 8 (~30 s here; ``method: cam``: RCA needs more than 36 iterations to pay off). Returns the
    two work dirs, ``trained`` and ``untrained``.
    """
    tree = yaml.safe_load((REPO / "rca" / "configs" / "demo.yaml").read_text())
    tree["data"].update(val_split=None, num_workers=0)
    tree["data"]["options"]["num_images"] = 96
    tree["cls"].update(method="cam", batch_size=8, epochs=3)
    tree["labels"].update(scales=[1.0], flip=False)
    root = tmp_path_factory.mktemp("quality")
    config = root / "quality.yaml"
    config.write_text(yaml.safe_dump(tree))
    trained, untrained = root / "trained", root / "untrained"
    assert train_cls.main(["--config", str(config), "--work-dir", str(trained), "--device", "cpu"]) == 0
    checkpoint = load_checkpoint(trained / "cls" / "best.pt")
    torch.manual_seed(0)
    checkpoint["model"] = build_classifier(**checkpoint["model_args"]).state_dict()
    save_checkpoint(untrained / "untrained.pt", checkpoint)
    for work_dir, weights in ((trained, trained / "cls" / "best.pt"), (untrained, untrained / "untrained.pt")):
        assert gen_labels.main(_labels_args(config, work_dir, weights)) == 0
    return {"trained": trained, "untrained": untrained, "config": config}


def test_gen_labels_of_a_trained_classifier_beat_cam_free_baselines(quality_runs):
    """Pseudo-label mIoU (measured 60 %) well above labelling every pixel background, the most
    frequent class (16 %), and above the labels of the untrained classifier (30 %: the image tags
    and the CRF alone already place some objects)."""
    options = load_config(quality_runs["config"]).data.options
    dataset = build_dataset("synthetic", "unused", "train", **options)
    masks = [dataset.load_mask(i) for i in range(len(dataset))]
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=dataset.num_classes)
    assert counts.argmax() == 0
    all_background = ConfusionMatrix(dataset.num_classes)
    for mask in masks:
        all_background.update(np.zeros_like(mask), mask)
    baseline = all_background.compute()["miou"]
    scores = {name: json.loads((quality_runs[name] / "labels" / "metrics.json").read_text())["pseudo_label"]
              for name in ("trained", "untrained")}
    assert scores["trained"]["strict_miou"] > baseline + 20, (scores["trained"], baseline)
    assert scores["trained"]["strict_miou"] > scores["untrained"]["strict_miou"] + 15, scores


# ---- stages/train_seg.py -------------------------------------------------------------------------
def _poly(base: float, t: int, total: int) -> float:
    return base * (1 - t / total) ** 0.9


def test_deeplab_param_groups_follow_the_poly_schedule():
    """DeepLab-v2: LR x1 backbone, x10 ASPP weights, x20 ASPP biases (no decay), times (1 - t/T)^0.9."""
    model = build_deeplab(3, backbone="resnet18", pretrained="none", freeze_bn=False)
    base, total = 0.01, 5
    groups = deeplab_param_groups(model, base)
    assert [g["lr_mult"] for g in groups] == [1, 10, 20]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.backbone.parameters()}
    assert groups[2]["weight_decay"] == 0.0 and "weight_decay" not in groups[1]
    optimizer = torch.optim.SGD(groups, lr=base, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=0.9)
    for t in range(total + 1):
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(_poly(base * group["lr_mult"], t, total), rel=1e-9, abs=1e-15)
        optimizer.step()
        scheduler.step()


def test_one_training_step_lowers_the_segmentation_loss():
    """One SGD step at DeepLab-v2's base LR (2.5e-4, the ``seg.lr`` default) on a fixed batch."""
    torch.manual_seed(0)
    model = build_deeplab(3, backbone="resnet18", pretrained="none", freeze_bn=False).train()
    items = [_dataset("train", eval_transform())[i] for i in range(4)]
    images = torch.stack([item["image"] for item in items])
    masks = torch.stack([torch.as_tensor(item["mask"]) for item in items])
    lr = SegConfig().lr
    optimizer = torch.optim.SGD(deeplab_param_groups(model, lr), lr=lr, momentum=0.9)
    loss = segmentation_loss(model(images), masks)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        assert segmentation_loss(model(images), masks) < loss.detach()


# the contrastive losses on true masks, shrunk (small heads and memories, few anchors)
SEG_CONTRAST = ["--set", "seg.labels=gt", "--set", "seg.contrast.losses=[pixel,pixel_memory,region,contextrast]",
                "--set", "seg.contrast.dim=8", "--set", "seg.contrast.pixel.memory_size=16",
                "--set", "seg.contrast.pixel.max_samples=64", "--set", "seg.contrast.pixel.max_views=8"]


@pytest.mark.parametrize("extra", [[], SEG_CONTRAST], ids=["ce", "contrast"])
def test_train_seg_checkpoint_lr_and_resume(pipeline, mini_config, tmp_path, monkeypatch, extra):
    """Crash at the first checkpoint (iteration 2 of 4, mid-epoch: an epoch has 4 batches): its LRs are
    the poly LRs of t = 2; a resume with another seg.iterations is refused; ``--resume`` finishes the
    run with the final weights and losses of the uninterrupted run (per-sample seeded augmentation).
    With the contrastive losses, the uninterrupted run is made here and the heads and memories are
    resumed too (``last.pt["contrast"]``)."""
    shutil.copytree(pipeline[0] / "labels", tmp_path / "labels")
    args = ["--config", str(mini_config), "--work-dir", str(tmp_path), "--device", "cpu", *extra]
    straight_dir = pipeline[0]
    if extra:
        straight_dir = tmp_path / "straight"
        assert train_seg.main([*args[:3], str(straight_dir), *args[4:]]) == 0
    _interrupt_after_first_checkpoint(monkeypatch, train_seg)
    with pytest.raises(Interrupted):
        train_seg.main(args)
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "seg" / "last.pt")
    assert state["iteration"] == 2
    config = load_config(mini_config)
    for group in state["optimizer"]["param_groups"]:
        assert group["lr"] == pytest.approx(_poly(config.seg.lr * group["lr_mult"], 2, 4), rel=1e-9)

    last = tmp_path / "seg" / "last.pt"
    mtime = last.stat().st_mtime_ns
    assert train_seg.main(args) == 2  # unfinished: --resume or --overwrite
    assert train_seg.main(args + ["--resume", "--set", "seg.iterations=6"]) == 2
    assert last.stat().st_mtime_ns == mtime
    assert train_seg.main(args + ["--resume"]) == 0
    final = load_checkpoint(last)
    straight = load_checkpoint(straight_dir / "seg" / "last.pt")
    assert final["iteration"] == 4 and [r["iteration"] for r in final["history"]] == [2, 4]
    assert [r["train_loss"] for r in final["history"]] == [r["train_loss"] for r in straight["history"]]
    assert final["model"].keys() == straight["model"].keys()
    for part in ("model", "contrast") if extra else ("model",):
        for name, tensor in straight[part].items():  # batch-norm statistics and memory banks included
            assert torch.equal(final[part][name], tensor), f"{part}.{name}"
    assert all(group["lr"] == 0 for group in final["optimizer"]["param_groups"])


def test_train_seg_eval_only_writes_predictions_and_their_miou(pipeline, mini_config, tmp_path):
    checkpoint = pipeline[0] / "seg" / "best.pt"
    args = ["--config", str(mini_config), "--work-dir", str(tmp_path), "--device", "cpu", "--eval-only",
            "--checkpoint", str(checkpoint)]
    assert train_seg.main(args) == 0
    dataset = _dataset("val")
    predictions = [load_label_png(tmp_path / "seg" / "predictions" / f"{name}.png") for name in dataset.ids]
    assert len(list((tmp_path / "seg" / "predictions").glob("*.png"))) == NUM_IMAGES
    assert all(p.shape == (IMAGE_SIZE, IMAGE_SIZE) and p.max() < len(CLASS_NAMES) for p in predictions)
    masks = [dataset.load_mask(i) for i in range(len(dataset))]
    result = json.loads((tmp_path / "seg" / "eval_metrics.json").read_text())
    assert result["miou"] == pytest.approx(_miou_by_hand(predictions, masks, len(CLASS_NAMES)), abs=1e-9)
    assert result["protocol"] == {"scales": [1.0], "flip": False, "crf": None}
    # the checkpoint's own validation scored the same predictions
    assert result["miou"] == pytest.approx(load_checkpoint(checkpoint)["best_score"], abs=1e-9)
    # panels (image | overlay | prediction | ground truth) of the first 8 predictions
    assert sorted(p.stem for p in (tmp_path / "seg" / "vis").glob("*.png")) == sorted(dataset.ids[:8])
    with Image.open(tmp_path / "seg" / "vis" / f"{dataset.ids[0]}.png") as panel:
        assert (panel.height, panel.width) == (IMAGE_SIZE, 4 * IMAGE_SIZE + 3 * 4)


# ---- stages/infer.py ----------------------------------------------------------------------------
def test_infer_writes_a_label_of_the_input_size_per_image(pipeline, tmp_path):
    rng = np.random.default_rng(0)
    inputs = tmp_path / "images"
    inputs.mkdir()
    sizes = {"wide": (40, 64), "tall": (70, 33), "val0": (IMAGE_SIZE, IMAGE_SIZE)}  # (H, W)
    Image.fromarray(rng.integers(0, 256, (*sizes["wide"], 3), dtype=np.uint8)).save(inputs / "wide.png")
    Image.fromarray(rng.integers(0, 256, (*sizes["tall"], 3), dtype=np.uint8)).save(inputs / "tall.jpg")
    Image.fromarray(_dataset("val")[0]["image"]).save(inputs / "val0.png")  # lossless: a known prediction
    (inputs / "notes.txt").write_text("not an image")
    output = tmp_path / "out"
    checkpoint = pipeline[0] / "seg" / "best.pt"
    assert infer.main(["--checkpoint", str(checkpoint), "--input", str(inputs), "--output", str(output),
                       "--device", "cpu"]) == 0
    assert sorted(p.name for p in output.iterdir()) == sorted(f"{name}{end}" for name in sizes
                                                              for end in (".png", "_overlay.png"))
    for name, size in sizes.items():
        label = load_label_png(output / f"{name}.png")
        assert label.shape == size and label.max() < len(CLASS_NAMES)
        with Image.open(output / f"{name}_overlay.png") as overlay:
            assert (overlay.height, overlay.width) == size and overlay.mode == "RGB"

    # the dataset image gets the prediction of the network on its dataset item
    state = load_checkpoint(checkpoint)
    model = build_deeplab(**state["model_args"])
    model.load_state_dict(state["model"])
    model.eval()
    with torch.inference_mode():
        expected = predict_probs(model, _dataset("val", eval_transform())[0]["image"]).argmax(0).numpy()
    np.testing.assert_array_equal(load_label_png(output / "val0.png"), expected)


def test_infer_predicts_a_split_without_masks_or_tags(tmp_path):
    """``--split test`` of a VOC root whose test split has images only (as VOC2012's): one label per id,
    the network's prediction on the dataset item; ``--root`` replaces the checkpoint's data.root. The
    classifier and CAM stages refuse that split by its config key (no tags)."""
    root = tmp_path / "VOC2012"
    ids = write_voc(root, {"test": _dataset("val")}, images_only=("test",))["test"]
    overrides = ["data.name=voc", f"data.root={tmp_path / 'moved'}", "data.options={}"]
    config = load_config(REPO / "rca" / "configs" / "demo.yaml", overrides)
    torch.manual_seed(0)
    model_args = {**deeplab_args(config.seg, 21), "pretrained": "none"}
    model = build_deeplab(**model_args).eval()
    checkpoint, output = tmp_path / "seg.pt", tmp_path / "out"
    save_checkpoint(checkpoint, {"kind": "segmentation", "model": model.state_dict(), "model_args": model_args,
                                 "palette": make_palette(21).tolist(), "config": config_to_dict(config)})
    args = ["--checkpoint", str(checkpoint), "--split", "test", "--output", str(output), "--device", "cpu"]
    with pytest.raises(FileNotFoundError, match="moved"):  # the checkpoint's data.root
        infer.main(args)
    assert infer.main([*args, "--root", str(root)]) == 0
    assert sorted(p.name for p in output.iterdir()) == sorted(f"{name}{end}" for name in ids
                                                              for end in (".png", "_overlay.png"))
    dataset = build_dataset("voc", root, "test", transform=eval_transform())
    with torch.inference_mode():
        for index in range(len(dataset)):
            item = dataset[index]
            expected = predict_probs(model, item["image"]).argmax(0).numpy()
            np.testing.assert_array_equal(load_label_png(output / f"{item['id']}.png"), expected)

    stage_args = ["--work-dir", str(tmp_path / "run"), "--device", "cpu", "--set", "data.name=voc",
                  "--set", f"data.root={root}", "--set", "data.options={}"]
    with pytest.raises(ValueError, match="data.train_split: VOC split 'test' has no image-level tags"):
        train_cls.main([*stage_args, "--set", "data.train_split=test", "--set", "data.val_split=null"])
    with pytest.raises(ValueError, match="data.label_split: VOC split 'test' has no image-level tags"):
        gen_labels.main([*stage_args, "--set", "data.label_split=test"])


# ---- the VOC protocol: labels made for the segmentation split, scored on its subset with masks -------
@pytest.fixture(scope="module")
def voc_pipeline(mini_config, tmp_path_factory):
    """``run_all.sh`` on a VOC-layout copy of the miniature data: ``train_aug`` (16 images) is what the
    classifier and DeepLab train on and what gets pseudo labels; ``train`` (its first 6) is scored."""
    root = tmp_path_factory.mktemp("voc") / "VOC2012"
    ids = write_voc(root, {"train_aug": _dataset("train"), "val": _dataset("val")})
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids["train_aug"][:6]) + "\n")
    tree = yaml.safe_load(mini_config.read_text())
    tree["data"].update(name="voc", root=str(root), train_split="train_aug", val_split="val",
                        label_split="train_aug", score_split="train", options={})
    config = root.parent / "voc_mini.yaml"
    config.write_text(yaml.safe_dump(tree))
    work_dir = root.parent / "run"
    result = _run_all(config, work_dir, crf_processes=1)
    assert result.returncode == 0, f"run_all.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return root, work_dir, result.stdout


def test_voc_protocol_labels_the_training_split_and_scores_its_subset(voc_pipeline):
    root, work_dir, stdout = voc_pipeline
    train_aug = (root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    scored = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert set(scored) < set(train_aug)
    assert sorted(p.stem for p in (work_dir / "labels").glob("*.png")) == sorted(train_aug)
    metrics = json.loads((work_dir / "labels" / "metrics.json").read_text())
    assert (metrics["label_split"], metrics["score_split"]) == ("train_aug", "train")
    assert (metrics["num_labelled"], metrics["num_scored"]) == (len(train_aug), len(scored))
    # the pseudo-label scores cover exactly the scored split's images
    labels = [load_label_png(work_dir / "labels" / f"{name}.png") for name in scored]
    masks = [load_label_png(root / "SegmentationClassAug" / f"{name}.png") for name in scored]
    num_classes = len(metrics["pseudo_label"]["iou_by_class"])
    assert num_classes == 21
    assert metrics["pseudo_label"]["strict_miou"] == pytest.approx(_miou_by_hand(labels, masks, num_classes), abs=1e-9)
    seg = json.loads((work_dir / "seg" / "metrics.json").read_text())
    assert seg["iterations_done"] == 4 and seg["best_val_miou"] is not None
    assert "labels for train_aug, scored on train" in stdout
    assert "CRF psa, 1 process(es)" in stdout  # CRF_PROCESSES=1 reached gen_labels


# ---- stages/train_seg.py: contrastive losses, validation side effects, eval-only panels ------------
def _scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the TensorBoard scalars under ``tb_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_train_seg_with_contrast_logs_each_term_and_exports_deeplab_only(mini_config, tmp_path):
    """seg.contrast.losses on true masks: every term is logged (TensorBoard ``seg/<name>`` each
    iteration, the interval means in metrics.json), the heads and memories train (LR x10 group) and
    are saved in last.pt only; best.pt's model is the DeepLab state of a run without them."""
    args = ["--config", str(mini_config), "--work-dir", str(tmp_path), "--device", "cpu", *SEG_CONTRAST]
    assert train_seg.main(args) == 0
    names = ["pixel", "pixel_memory", "region", "contextrast"]
    history = json.loads((tmp_path / "seg" / "metrics.json").read_text())["history"]
    assert [r["iteration"] for r in history] == [2, 4]
    for record in history:
        assert all(np.isfinite(record[f"train_{name}"]) for name in names)
        assert record["train_loss"] > sum(record[f"train_{name}"] for name in names)  # + cross-entropy
    scalars = _scalars(tmp_path / "seg" / "tb")
    for name in ["loss", *names]:
        assert [step for step, _ in scalars[f"seg/{name}"]] == [1, 2, 3, 4], name
    for name in names:  # the record is the mean of the logged iterations
        logged = [value for _, value in scalars[f"seg/{name}"]]
        assert history[0][f"train_{name}"] == pytest.approx(np.mean(logged[:2]), rel=1e-5)
    assert all(value != 0 for _, value in scalars["seg/region"][1:])  # memory filled after step 1

    best, last = (load_checkpoint(tmp_path / "seg" / name) for name in ("best.pt", "last.pt"))
    plain = build_deeplab(**best["model_args"]).state_dict()
    assert best["model"].keys() == plain.keys() and "contrast" not in best
    assert last["model"].keys() == plain.keys()
    heads = last["contrast"]
    assert any(key.startswith("losses.contextrast.heads.") for key in heads)
    assert heads["losses.region.memory.filled"].sum() > 0 and heads["losses.pixel_memory.pixel_memory.filled"].sum() > 0
    assert [g["lr_mult"] for g in last["optimizer"]["param_groups"]] == [1, 10, 20, 10]


def test_train_seg_history_matches_eval_only_of_best(mini_config, tmp_path):
    """The val mIoU the history records for the best iteration is the score of best.pt itself: validation
    and its TensorBoard prediction panels run in eval mode, so batch norm (trained: freeze_bn false)
    never learns val images between the score and the checkpoint."""
    args = ["--config", str(mini_config), "--work-dir", str(tmp_path), "--device", "cpu", "--set", "seg.labels=gt",
            "--set", "seg.iterations=6", "--set", "seg.val_interval=3"]
    assert train_seg.main(args) == 0
    metrics = json.loads((tmp_path / "seg" / "metrics.json").read_text())
    assert train_seg.main(args + ["--eval-only"]) == 0
    result = json.loads((tmp_path / "seg" / "eval_metrics.json").read_text())
    assert result["miou"] == pytest.approx(metrics["best_val_miou"], abs=1e-9)
    assert result["iou_by_name"] == pytest.approx(metrics["iou_by_class"], abs=1e-9)

