"""Stage 2: CAMs -> CAM seeds -> dense CRF -> pseudo labels, scored the way the WSSS field scores them.

    python stages/gen_labels.py --config rca/configs/<exp>.yaml [--set key=value ...] [--work-dir DIR]
                                [--checkpoint FILE] [--crf-processes N] [--vis N] [--shard i/n]
                                [--overwrite]

Reads ``DIR/cls/best.pt`` and, for every image of ``data.label_split`` (the split the segmentation
network trains on: VOC ``train_aug``), writes

* ``DIR/cams/<id>.npz``: ``{"cams": (T, H, W) float16 in [0, 1], "classes": (T,) label values}``,
  the multi-scale + flip CAMs of the T tagged classes (:mod:`rca.cam`);
* ``DIR/labels/<id>.png``: the pseudo label (palette PNG, 255 = ignore) made by ``labels.rule`` with
  the ``labels.crf`` dense CRF (:mod:`rca.pseudo_labels`, :mod:`rca.crf`);
* ``DIR/labels/metrics.json``, printed as a table: the scores of the labelled images of
  ``data.score_split`` (VOC ``train``, the images with masks; default: the label split), following
  the protocol written in :mod:`rca.labelling` (headline CAM seed and seed + CRF at
  ``labels.bg_threshold``, strict / lenient pseudo-label mIoU, an oracle threshold curve), plus the
  CAM / CRF throughput in images/s.

The CAMs are computed in this process (on the GPU when there is one); the CRF pseudo labels and the
scoring run in a pool of ``--crf-processes`` spawned processes made once for the whole run (1, the
default: in this process; :class:`rca.engine.pool.WorkerPool`). ``data.num_workers`` plays no part here.

Existing outputs (panels included) are skipped (``--overwrite`` redoes them); outputs made with
other settings or from another classifier checkpoint (its SHA-256) are refused
(``DIR/labels/fingerprint.json``, :mod:`rca.engine.fingerprint`). Every file is written atomically;
the partial files of a write a kill interrupted are deleted at the start. ``--shard i/n``
processes images ``i, i+n, ...`` so that n machines or GPUs can share a split (then nothing is
deleted at the start); scoring runs once all labels of the split exist. With ``--skip-bad`` an
unreadable image is listed in ``DIR/labels/skipped.txt`` and gets no CAM, no label and no score
(:mod:`rca.data.skip`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rca.cli import make_parser, parse_command_line
from rca.config import add_config_args, config_from_args, save_config


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    add_config_args(parser)
    parser.add_argument("--checkpoint", default=None, help="classifier checkpoint (default DIR/cls/best.pt)")
    parser.add_argument("--crf-processes", type=int, default=1, metavar="N",
                        help="processes making the CRF pseudo labels and scoring them (default 1: this one)")
    parser.add_argument("--vis", type=int, default=0, metavar="N", help="write N visualisation panels to DIR/vis")
    parser.add_argument("--shard", default="0/1", metavar="i/n", help="process images i, i+n, ... (default 0/1)")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="list unreadable images in DIR/labels/skipped.txt and go on without them")
    return parse_command_line(parser, argv)


if __name__ == "__main__":
    parse_args()  # --help, --print-config and argument errors answer here, before the heavy imports below (rca/cli.py)

import torch
from tqdm import tqdm

from rca.data import build_dataset
from rca.data.skip import SKIPPED_FILE, read_or_skip
from rca.data.transforms import eval_transform
from rca.engine.checkpoint import load_checkpoint, load_model_state
from rca.engine.fingerprint import StaleOutputsError, check_fingerprint, file_settings
from rca.engine.logs import setup_logger, tensorboard_writer
from rca.engine.pool import WorkerPool
from rca.engine.run import EXIT_REFUSED
from rca.errors import DataError, UserError, run_cli
from rca.io import load_label_png, remove_partial_writes, save_json, save_rgb_png
from rca.labelling import LabelJob, compute_cams, format_report, label_rule, load_cams, save_cams, summarise_scores
from rca.models.classifier import build_classifier
from rca.vis import make_panel


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= index < count:
        raise UserError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def write_cams(dataset, indices: list[int], cam_dir: Path, checkpoint_path: Path, config, device, log,
               skip_log: Path | None) -> float:
    """Multi-scale CAMs of ``dataset[indices]`` into ``cam_dir`` (unusable images listed in
    ``skip_log`` when given); returns images/s."""
    checkpoint = load_checkpoint(checkpoint_path, kind="classifier")
    model = build_classifier(**checkpoint["model_args"]).to(device)
    load_model_state(model, checkpoint, checkpoint_path,
                     fix="train the classifier again (stages/train_cls.py --overwrite)")
    model.eval()
    to_tensor = eval_transform()
    start = time.perf_counter()
    for index in tqdm(indices, desc="CAMs"):
        if (item := read_or_skip(dataset, index, skip_log)) is None:
            continue
        item = to_tensor(item)
        cams, classes = compute_cams(model, item["image"], item["tags"], dataset.label_space,
                                     config.labels.scales, config.labels.flip)
        save_cams(cam_dir / f"{item['id']}.npz", cams, classes)
    speed = len(indices) / (time.perf_counter() - start)
    log.info("CAMs: %d images from %s, %.2f images/s on %s", len(indices), checkpoint_path, speed, device)
    return speed


def score(job: LabelJob, pool: WorkerPool, config, timing: dict) -> dict:
    """Score the labelled images of the score split; the whole ``labels/metrics.json``."""
    labelled = set(job.label_set.ids) - job.skipped()
    indices = [i for i, name in enumerate(job.score_set.ids) if name in labelled]
    parts = [part for part in pool.map("score", indices, "scores") if part is not None] if indices else []
    if not parts:
        raise DataError(f"data.score_split={score_split(config.data)!r} shares no usable image with "
                        f"data.label_split={config.data.label_split!r}: nothing to score")
    total, *rest = parts
    for part in rest:
        total.merge(part)
    return {
        "label_split": config.data.label_split, "score_split": score_split(config.data),
        "num_labelled": len(job.label_set), "num_scored": len(parts), "num_skipped": len(job.skipped()),
        "protocol": {"scales": config.labels.scales, "flip": config.labels.flip, "rule": job.rule.name,
                     **job.rule.params, "crf": job.rule.crf},
        **summarise_scores(total, job), "timing": timing,
    }


def score_split(data) -> str:
    """The split whose labelled images are scored: ``data.score_split``, by default the label split."""
    return data.score_split or data.label_split


def build_job(config, work_dir: Path, skip_bad: bool = False) -> LabelJob:
    """The per-image context of this run: both splits, the folders, the rule, the thresholds, and
    with ``skip_bad`` the list of skipped images."""
    data, labels_cfg = config.data, config.labels
    label_set = build_dataset(data.name, data.root, data.label_split, **data.options)
    label_set.require_tags("data.label_split")  # CAMs are made for the tagged classes
    score_set = label_set
    if score_split(data) != data.label_split:
        score_set = build_dataset(data.name, data.root, score_split(data), **data.options)
    sweep = list(labels_cfg.sweep) if label_set.has_background else []
    return LabelJob(label_set, score_set, work_dir / "cams", work_dir / "labels",
                    label_rule(labels_cfg, label_set.has_background), labels_cfg.bg_threshold, sweep,
                    work_dir / "labels" / SKIPPED_FILE if skip_bad else None)


def make_labels(job: LabelJob, pool: WorkerPool, indices: list[int], args, config, checkpoint: Path, log) -> dict:
    """CAMs, then pseudo labels, of the images ``indices`` that lack them; returns their speeds.

    Before it writes any, it deletes ``labels/metrics.json``: scores stand for the files they were
    computed from, and a run killed before it scores again must leave none of the old ones behind.
    """
    timing, ids = {}, job.label_set.ids
    cams_todo = [i for i in indices if args.overwrite or not (job.cam_dir / f"{ids[i]}.npz").is_file()]
    labels_todo = [i for i in indices if args.overwrite or not (job.label_dir / f"{ids[i]}.png").is_file()]
    if cams_todo or labels_todo:
        (job.label_dir / "metrics.json").unlink(missing_ok=True)
    if labels_todo:
        pool.start()  # the CRF workers start up while the CAMs are computed
    if cams_todo:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        timing["cam_images_per_s"] = write_cams(job.label_set, cams_todo, job.cam_dir, checkpoint, config, device,
                                                log, job.skip_log)
    if labels_todo:
        start = time.perf_counter()
        pool.map("make_label", labels_todo, "pseudo labels")
        timing["label_images_per_s"] = len(labels_todo) / (time.perf_counter() - start)
        log.info("pseudo labels: %d images, rule %s, CRF %s, %d process(es): %.2f images/s", len(labels_todo),
                 job.rule.name, job.rule.crf, args.crf_processes, timing["label_images_per_s"])
    return timing


def main(argv=None) -> int:
    args = parse_args(argv)
    config, work_dir = config_from_args(args)
    shard_index, shard_count = parse_shard(args.shard)
    log = setup_logger("gen_labels", work_dir / "labels" / "gen_labels.log", True)
    checkpoint = Path(args.checkpoint or work_dir / "cls" / "best.pt")
    try:
        check_fingerprint(work_dir / "labels", config, "labels", overwrite=args.overwrite,
                          extra=file_settings("checkpoint", checkpoint))
    except StaleOutputsError as error:
        log.error("%s", error)
        return EXIT_REFUSED
    if shard_count == 1:  # shards share the folders: another one's write in progress looks the same
        remove_partial_writes(*(work_dir / folder for folder in ("cams", "labels", "vis")), log=log)
    save_config(config, work_dir / "labels" / "config.yaml")
    job = build_job(config, work_dir, args.skip_bad)
    indices = list(range(shard_index, len(job.label_set), shard_count))
    with WorkerPool(job, args.crf_processes) as pool:
        timing = make_labels(job, pool, indices, args, config, checkpoint, log)
        ids, vis_dir = job.label_set.ids, work_dir / "vis"
        panels = [i for i in indices[: args.vis] if (job.label_dir / f"{ids[i]}.png").is_file()
                  and (args.overwrite or not (vis_dir / f"{ids[i]}.png").is_file())]
        if panels:
            write_panels(job.label_set, panels, job.cam_dir, job.label_dir, vis_dir)
        if not job.score_set.has_masks:
            log.info("split %r has no masks: nothing to score", score_split(config.data))
            return 0
        if job.unlabelled():
            log.info("shard %s done; scores are computed once every shard has finished", args.shard)
            return 0
        metrics_path = job.label_dir / "metrics.json"
        if metrics_path.is_file():  # nothing new since the last scoring (make_labels deletes it otherwise)
            print(format_report(json.loads(metrics_path.read_text())))
            return 0
        metrics = score(job, pool, config, timing)
    save_json(metrics_path, metrics)
    print(format_report(metrics))
    return 0


def write_panels(dataset, indices: list[int], cam_dir: Path, label_dir: Path, vis_dir: Path) -> None:
    """PNG panels image | CAM per tagged class | pseudo label | ground truth, also to TensorBoard."""
    writer = tensorboard_writer(label_dir / "tb", True)
    for index in indices:
        item = dataset[index]
        cams, classes = load_cams(cam_dir / f"{item['id']}.npz")
        names = [dataset.class_names[c] for c in classes]
        panel = make_panel(item["image"], cams, names, load_label_png(label_dir / f"{item['id']}.png"),
                           item.get("mask"), dataset.palette)
        save_rgb_png(vis_dir / f"{item['id']}.png", panel)
        writer.add_image(f"labels/{item['id']}", panel, 0, dataformats="HWC")
    writer.close()


if __name__ == "__main__":
    sys.exit(run_cli(main))
