"""The run report (rca.report) on a fake work dir, its charts (rca.plots) and the prediction pictures (rca.vis).

The work dir is written here by hand in the on-disk formats of the stages (``cls``, ``labels`` and
``seg`` ``metrics.json``, ``config.yaml``, ``vis/`` panels, ``seg/predictions/``), so every number
the report shows is known in advance.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from rca.data.palette import make_palette
from rca.errors import run_cli
from rca.io import save_json, save_label_png, save_rgb_png
from rca.report import _tb_scalars, canonical_labels, read_run, summary_rows, write_report
from rca.vis import label_overlay, prediction_panel, write_prediction_panels

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["background", "disc", "square"]
PALETTE = make_palette(len(CLASSES))

CLS = {
    "method": "rca", "epochs_done": 3, "epochs": 3, "best_val_map": 87.5512,
    "val_ap_by_class": {"disc": 90.0, "square": 85.1},
    "history": [{"epoch": e, "s_per_iter": 0.5, "train_loss": 1.0 - 0.2 * e, "train_cls": 0.9 - 0.2 * e,
                 "train_contrast": 0.1 * e, "val_map": 80.0 + 3.7 * e} for e in range(3)],
}
LABELS = {  # gen_labels' format before the seed rename: the seed at the best threshold of the sweep
    "split": "train", "num_images": 4,
    "protocol": {"scales": [1.0], "flip": True, "rule": "constant", "threshold": 0.3, "crf": "psa"},
    "seed": {"curve": {"0.20": 40.0, "0.25": 52.25, "0.30": 48.0}, "best_threshold": 0.25, "miou": 52.25,
             "iou_by_class": {"background": 70.0, "disc": 50.0, "square": 36.75}},
    "seed_crf": {"miou": 55.125, "iou_by_class": {"background": 72.0, "disc": 55.0, "square": 38.375}},
    "pseudo_label": {"strict_miou": 54.0, "lenient_miou": 58.5, "labelled_fraction": 91.25,
                     "iou_by_class": {"background": 75.0, "disc": 60.0, "square": float("nan")}},
    "timing": {},
}
SEG = {
    "labels": "pseudo", "iterations_done": 20, "iterations": 20, "best_val_miou": 61.0625,
    "iou_by_class": {"background": 80.0, "disc": 60.0, "square": 43.1875},
    "protocol": {"scales": [1.0], "flip": False, "crf": None},
    "history": [{"iteration": i, "train_loss": 1.0 / i, "s_per_iter": 0.1, "val_miou": 50.0 + i / 2} for i in (10, 20)],
}


class _Page(HTMLParser):
    """Collects the image sources, link targets and table cells of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.images, self.links, self.cells, self.notes = [], [], [], []
        self._cell = self._note = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(unquote(attrs["src"]))
        elif tag == "a":
            self.links.append(unquote(attrs["href"]))
        elif tag == "td":
            self._cell = ""
        elif tag == "p" and attrs.get("class") == "note":
            self._note = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._note is not None:
            self._note += data

    def handle_endtag(self, tag):
        if tag == "td":
            self.cells.append(self._cell)
            self._cell = None
        elif tag == "p" and self._note is not None:
            self.notes.append(self._note)
            self._note = None


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def make_work_dir(root: Path) -> Path:
    """A finished run of 2 images with every file the report reads."""
    work = root / "runs" / "fake"
    save_json(work / "cls" / "metrics.json", CLS)
    save_json(work / "labels" / "metrics.json", LABELS)
    save_json(work / "seg" / "metrics.json", SEG)
    for stage in ("cls", "labels", "seg"):
        (work / stage / "config.yaml").write_text("name: fake\nseed: 0\n")
    (work / "cls" / "train.log").write_text("epoch 0\n")
    rng = np.random.default_rng(0)
    for name in ("img 1", "img2"):  # a space: paths in the page must be URL-quoted
        save_rgb_png(work / "vis" / f"{name}.png", rng.integers(0, 256, (8, 20, 3), dtype=np.uint8))
        save_label_png(work / "seg" / "predictions" / f"{name}.png", rng.integers(0, 3, (8, 8)), PALETTE)
    return work


@pytest.fixture
def work_dir(tmp_path) -> Path:
    return make_work_dir(tmp_path)


def test_report_shows_the_numbers_and_every_picture_it_references_exists(work_dir):
    html_path, md_path = write_report(work_dir)
    page = parse(html_path)
    # every image and link resolves inside the work dir; the charts, the panels and the predictions are all there
    assert page.images and all((work_dir / src).is_file() for src in page.images + page.links)
    assert {"report/iou_by_class.png", "report/seed_curve.png", "report/training.png", "vis/img 1.png",
            "vis/img2.png", "seg/predictions/img 1.png"} <= set(page.images)
    assert all((work_dir / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for src in page.images)
    # the summary table holds the numbers of the metrics files, rounded to 2 decimals
    rows = dict(zip(page.cells[0::3], page.cells[1::3]))
    assert rows["classifier val tag mAP"] == "87.55"
    assert rows["CAM seed mIoU"] == "52.25"
    assert rows["CAM seed + CRF mIoU"] == "55.12"  # 55.125 is exact in binary: rounded half to even
    assert rows["pseudo-label mIoU (strict)"] == "54.00"
    assert rows["pseudo-label mIoU (lenient)"] == "58.50"
    assert rows["segmentation val mIoU"] == "61.06"
    assert "oracle: best CAM seed mIoU" not in rows  # this format reported the seed at the best threshold
    assert "threshold 0.25, labels for train, scored on train" in page.cells
    assert "91.2% labelled" in page.cells
    # the Markdown report holds the same table and pictures
    markdown = md_path.read_text()
    assert "| CAM seed mIoU | 52.25 | threshold 0.25, labels for train, scored on train |" in markdown
    assert "![training curves](report/training.png)" in markdown and "(vis/img%201.png)" in markdown
    assert not list(work_dir.glob(".*.tmp")) and not list((work_dir / "report").glob(".*.tmp"))


def test_overlay_panels_are_preferred_to_raw_predictions_and_eval_scores_shown(work_dir):
    save_rgb_png(work_dir / "seg" / "vis" / "img2.png", np.zeros((8, 44, 3), np.uint8))
    save_json(work_dir / "seg" / "eval_metrics.json", {"miou": 63.5, "iou_by_name": {"disc": 70.0}, "protocol": {}})
    page = parse(write_report(work_dir)[0])
    assert "seg/vis/img2.png" in page.images and not any(src.startswith("seg/predictions") for src in page.images)
    assert dict(zip(page.cells[0::3], page.cells[1::3]))["segmentation eval mIoU"] == "63.50"


@pytest.mark.parametrize("removed", ["labels", "seg", "cls", "vis", "all"])
def test_a_missing_stage_leaves_a_note_not_a_crash(work_dir, removed):
    for part in (["cls", "labels", "seg", "vis"] if removed == "all" else [removed]):
        shutil.rmtree(work_dir / part)
    page = parse(write_report(work_dir)[0])
    assert all((work_dir / src).is_file() for src in page.images + page.links)
    notes = " ".join(page.notes)
    rows = dict(zip(page.cells[0::3], page.cells[1::3]))
    if removed in ("labels", "all"):
        assert "labels/metrics.json: not found" in notes and rows["CAM seed mIoU"] == "n/a"
        assert "report/seed_curve.png" not in page.images
    if removed in ("seg", "all"):
        assert "seg/metrics.json: not found" in notes and rows["segmentation val mIoU"] == "n/a"
        assert "no predictions on disk" in notes
    if removed in ("vis", "all"):
        assert "no panels in vis/" in notes
    if removed == "all":
        assert not page.images and "cls/metrics.json: not found" in notes
    else:
        assert "report/training.png" in page.images


def test_unreadable_metrics_and_unexpected_values_give_notes(work_dir):
    (work_dir / "labels" / "metrics.json").write_text('{"seed": ')  # a truncated file
    save_json(work_dir / "seg" / "metrics.json", {**SEG, "best_val_miou": "sixty"})  # not a number
    page = parse(write_report(work_dir)[0])
    notes = " ".join(page.notes)
    assert "labels/metrics.json: unreadable" in notes
    assert "left out: could not read its inputs" in notes  # the summary cannot format "sixty"
    assert "report/training.png" in page.images  # the other sections are still drawn


CAM_SEED_LABELS = {  # the newer format: CAM seed at labels.bg_threshold, the sweep apart as an oracle
    "label_split": "train_aug", "score_split": "train", "num_labelled": 6, "num_scored": 4,
    "protocol": LABELS["protocol"],
    "cam_seed": {"threshold": 0.3, "miou": 48.0, "iou_by_class": {"background": 66.0, "disc": 44.0, "square": 34.0}},
    "cam_seed_crf": {"threshold": 0.3, "crf": "psa", "miou": 50.5, "iou_by_class": LABELS["seed_crf"]["iou_by_class"]},
    "pseudo_label": LABELS["pseudo_label"],
    "oracle_sweep": {"note": "oracle", "curve": LABELS["seed"]["curve"], "best_threshold": 0.25, "best_miou": 52.25},
}


def test_both_formats_of_the_labels_metrics_read_alike():
    old, new = canonical_labels(LABELS), canonical_labels(CAM_SEED_LABELS)
    assert old["curve"] == new["curve"] == {0.2: 40.0, 0.25: 52.25, 0.3: 48.0}
    for labels in (old, new):
        assert (labels["oracle_threshold"], labels["oracle_miou"]) == (0.25, 52.25)
    fields = ("threshold", "label_split", "score_split")
    assert [old[k] for k in fields] == [0.25, "train", "train"] and old["seed"]["miou"] == 52.25
    assert [new[k] for k in fields] == [0.3, "train_aug", "train"] and new["seed"]["miou"] == 48.0
    assert old["seed_crf"]["miou"] == 55.125 and new["seed_crf"]["miou"] == 50.5
    assert (old["num_scored"], new["num_scored"]) == (4, 4)
    empty = canonical_labels({})
    assert empty["seed"] == empty["curve"] == {} and empty["threshold"] is None


def test_cam_seed_format_shows_the_oracle_apart(work_dir):
    save_json(work_dir / "labels" / "metrics.json", CAM_SEED_LABELS)
    rows = {name: (value, note) for name, value, note in summary_rows(read_run(work_dir))}
    assert rows["CAM seed mIoU"] == (48.0, "threshold 0.30, labels for train_aug, scored on train")
    assert rows["CAM seed + CRF mIoU"] == (50.5, "threshold 0.30")
    assert rows["oracle: best CAM seed mIoU"] == (52.25, "threshold 0.25 picked on the scored masks (upper bound)")
    page = parse(write_report(work_dir)[0])
    assert "report/seed_curve.png" in page.images
    argmax = {k: v for k, v in CAM_SEED_LABELS.items() if k != "oracle_sweep"}  # no background class
    argmax["cam_seed"] = {**argmax["cam_seed"], "threshold": None}
    save_json(work_dir / "labels" / "metrics.json", argmax)
    rows = {name: (value, note) for name, value, note in summary_rows(read_run(work_dir))}
    assert rows["CAM seed mIoU"] == (48.0, "argmax, labels for train_aug, scored on train")
    assert "oracle: best CAM seed mIoU" not in rows
    assert "no threshold sweep" in " ".join(parse(write_report(work_dir)[0]).notes)


def test_tensorboard_losses_keep_the_last_value_of_a_step_logged_twice(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for values in ([1.0, 0.8, 0.6], [0.7, 0.5]):  # a run, then a resume from step 1
        writer = SummaryWriter(str(tmp_path))
        for step, value in enumerate(values, start=3 - len(values)):
            writer.add_scalar("cls/loss", value, step)
        writer.close()
    steps, values = _tb_scalars(tmp_path)["cls/loss"]
    assert steps == [0, 1, 2] and values == pytest.approx([1.0, 0.7, 0.5])
    assert _tb_scalars(tmp_path / "absent") == {}


def test_cli_writes_the_report_and_rejects_a_missing_dir(work_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("report_cli", REPO / "scripts" / "report.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main([str(work_dir)]) == 0 and (work_dir / "report.html").is_file()
    assert run_cli(cli.main, [str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a folder" in err


# ---- pictures for the stages (rca.vis) -------------------------------------------------------------------
def test_label_overlay_blends_labelled_pixels_and_keeps_ignored_ones():
    image = np.full((1, 2, 3), 100, np.uint8)
    palette = np.zeros((256, 3), np.uint8)
    palette[1] = (200, 0, 50)
    out = label_overlay(image, np.array([[1, 255]]), palette, alpha=0.5)
    assert out[0, 0].tolist() == [150, 50, 75] and out[0, 1].tolist() == [100, 100, 100]
    with pytest.raises(ValueError, match="label values"):
        label_overlay(image, np.array([[1, 256]]), palette)
    with pytest.raises(ValueError, match=r"\(H, W\) label map"):
        label_overlay(image, np.zeros((2, 2), int), palette)


def test_prediction_panels_are_written_for_images_with_a_prediction(tmp_path):
    size = 40  # captions cover the top rows of each tile; row 30 is clear of them

    class Tiny:  # the interface of rca.data datasets built without a transform
        ids, palette = ["a", "b", "c"], PALETTE

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, index):
            return {"id": self.ids[index], "image": np.full((size, size, 3), 40 * index, np.uint8),
                    "mask": np.full((size, size), index % 3)}

    for name, value in (("a", 2), ("c", 1)):  # "b" has no prediction (another rank's shard, say)
        save_label_png(tmp_path / "pred" / f"{name}.png", np.full((size, size), value), PALETTE)
    written = write_prediction_panels(Tiny(), tmp_path / "pred", tmp_path / "vis", count=5)
    assert [p.name for p in written] == ["a.png", "c.png"]
    with Image.open(written[1]) as image:
        panel = np.asarray(image.convert("RGB"))
    step = size + 4  # tile + white gap: image | prediction over image | prediction | ground truth
    assert panel.shape == (size, 4 * size + 3 * 4, 3)
    assert panel[30, 5].tolist() == [80, 80, 80]  # image "c"
    assert panel[30, step + 5].tolist() == label_overlay(np.full((1, 1, 3), 80, np.uint8), np.array([[1]]),
                                                         PALETTE)[0, 0].tolist()
    assert panel[30, 2 * step + 5].tolist() == PALETTE[1].tolist()  # prediction 1
    assert panel[30, 3 * step + 5].tolist() == PALETTE[2].tolist()  # mask 2 % 3 = 2
    assert (panel[:, size:size + 4] == 255).all()  # the gap
    assert write_prediction_panels(Tiny(), tmp_path / "pred", tmp_path / "vis2", count=1)[0].name == "a.png"
    no_gt = prediction_panel(np.zeros((size, size, 3), np.uint8), np.zeros((size, size), int), None, PALETTE)
    assert no_gt.shape == (size, 3 * size + 2 * 4, 3)
