"""Stage 2: CAMs -> seeds -> dense CRF -> pseudo labels, scored the way the WSSS field scores them.

    python stages/gen_labels.py --config rca/configs/<exp>.yaml [--set key=value ...] [--work-dir DIR]
                                [--checkpoint FILE] [--workers N] [--vis N] [--shard i/n] [--overwrite]

Reads ``DIR/cls/best.pt`` and, for every image of ``data.label_split``, writes

* ``DIR/cams/<id>.npy``: ``{"cams": (T, H, W) float16 in [0, 1], "classes": (T,) label values}``,
  the multi-scale + flip CAMs of the T tagged classes (:mod:`rca.cam`);
* ``DIR/labels/<id>.png``: the pseudo label (palette PNG, 255 = ignore) made by ``labels.rule`` and
  refined by the ``labels.crf`` dense CRF (:mod:`rca.pseudo_labels`, :mod:`rca.crf`);
* ``DIR/labels/metrics.json`` (when the split has masks), printed as a table:

  - seed mIoU over background thresholds ``labels.sweep`` (constant background score; argmax over
    the tagged classes on datasets without a background class) and the best threshold;
  - seed + CRF mIoU at the best threshold;
  - pseudo-label mIoU, strict (a 255 pixel counts as background, or as wrong without a background
    class) and lenient (255 pixels dropped, the EPS/RCA protocol), and the fraction labelled;
  - per-class IoU by class name, the protocol, and the CAM / CRF throughput in images/s.

VOC convention: seeds and pseudo labels are scored on ``train`` (the images they are made for),
never tuned on ``val``. Existing outputs are skipped (``--overwrite`` redoes them), every file is
written atomically, and ``--shard i/n`` processes images ``i, i+n, ...`` so that n machines or GPUs
can share a split; scoring runs once all labels of the split exist.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rca.cam import multiscale_cam, normalize_cams
from rca.config import add_config_args, config_from_args, save_config
from rca.data import build_dataset
from rca.data.transforms import eval_transform
from rca.engine.checkpoint import load_checkpoint
from rca.engine.logs import setup_logger, tensorboard_writer
from rca.io import load_label_png, load_npy, save_json, save_label_png, save_npy, save_rgb_png
from rca.metrics import ConfusionMatrix, PseudoLabelMetrics, format_iou_table
from rca.models.classifier import build_classifier
from rca.pseudo_labels import argmax_labels, constant_background, make_pseudo_label
from rca.vis import make_panel

CRF_CHOICES = ("psa", "deeplab", "irn", "none")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--checkpoint", default=None, help="classifier checkpoint (default DIR/cls/best.pt)")
    parser.add_argument("--workers", type=int, default=1, help="processes for the CRF and scoring (default 1)")
    parser.add_argument("--vis", type=int, default=0, metavar="N", help="write N visualisation panels to DIR/vis")
    parser.add_argument("--shard", default="0/1", metavar="i/n", help="process images i, i+n, ... (default 0/1)")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return parser.parse_args(argv)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def label_rule(config, has_background: bool) -> tuple[str, dict, bool]:
    """The pseudo-label rule, its parameters (but the image) and whether the CRF is on.

    ``labels.crf``: ``psa``/``deeplab`` name the dense-CRF preset of the constant, power, saliency
    and argmax rules; ``irn`` is IRN's label-unary CRF of the confident rule (which uses it whenever
    the CRF is on); ``none`` turns the CRF off.
    """
    cfg = config.labels
    if cfg.crf not in CRF_CHOICES:
        raise ValueError(f"labels.crf must be one of {CRF_CHOICES}, got {cfg.crf!r}")
    rule = cfg.rule if has_background else "argmax"
    params = {
        "constant": {"threshold": cfg.bg_threshold},
        "power": {"alpha": cfg.power_alpha},
        "confident": {"fg_threshold": cfg.fg_threshold, "bg_threshold": cfg.low_threshold},
        "saliency": {},
        "argmax": {},
    }.get(rule)
    if params is None:
        raise ValueError(f"labels.rule must be constant, power, confident or saliency, got {cfg.rule!r}")
    if rule == "saliency" and not cfg.saliency_dir:
        raise ValueError("labels.rule=saliency needs labels.saliency_dir (a folder of <id>.png saliency maps)")
    if cfg.crf == "irn" and rule != "confident":
        raise ValueError(f"labels.crf=irn is the CRF of labels.rule=confident; use psa or deeplab with {rule!r}")
    if rule != "confident" and cfg.crf != "none":
        params["crf_preset"] = cfg.crf
    return rule, params, cfg.crf != "none"


# ---- per-image work, run in a pool of processes (the dense CRF is CPU-bound) -------------------------
_WORKER: dict = {}


def _init_worker(state: dict) -> None:
    torch.set_num_threads(1)
    _WORKER.update(state)


def _load(index: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Dataset item, its saved CAMs (float32) and their class label values."""
    item = _WORKER["dataset"][index]
    saved = load_npy(_WORKER["cam_dir"] / f"{item['id']}.npy")
    return item, saved["cams"].astype(np.float32), saved["classes"]


def _make_label(index: int) -> None:
    """Write the pseudo label of one image from its saved CAMs."""
    item, cams, classes = _load(index)
    params = dict(_WORKER["rule_params"])
    if _WORKER["use_crf"]:
        params["image"] = item["image"]
    if _WORKER["rule"] == "saliency":
        params["saliency"] = load_label_png(Path(_WORKER["saliency_dir"]) / f"{item['id']}.png") / 255.0
    label = make_pseudo_label(cams, classes, _WORKER["rule"], **params)
    save_label_png(_WORKER["label_dir"] / f"{item['id']}.png", label, _WORKER["dataset"].palette)


def _seed(cams: np.ndarray, classes: np.ndarray, threshold: float, image=None, crf="psa") -> np.ndarray:
    """The seed (CAM + constant background at ``threshold``; argmax without a background class)."""
    if not _WORKER["dataset"].has_background:
        return argmax_labels(cams, classes, image=image, crf_preset=crf)
    return constant_background(cams, classes, threshold, image=image, crf_preset=crf)


def _score_seeds(index: int) -> np.ndarray:
    """Confusion matrices ``(S, C, C + 1)`` of the seeds of one image at every sweep threshold."""
    item, cams, classes = _load(index)
    matrices = []
    for threshold in _WORKER["sweep"]:
        matrix = ConfusionMatrix(_WORKER["dataset"].num_classes)
        matrix.update(_seed(cams, classes, threshold), item["mask"])
        matrices.append(matrix.matrix.numpy())
    return np.stack(matrices)


def _score_labels(index: int) -> tuple[np.ndarray, PseudoLabelMetrics]:
    """Seed + CRF confusion matrix at the best threshold, and the pseudo-label scores, of one image."""
    dataset = _WORKER["dataset"]
    item, cams, classes = _load(index)
    seed_crf = _seed(cams, classes, _WORKER["best_threshold"], item["image"], _WORKER["seed_crf_preset"])
    matrix = ConfusionMatrix(dataset.num_classes)
    matrix.update(seed_crf, item["mask"])
    pseudo = PseudoLabelMetrics(dataset.num_classes, dataset.has_background)
    pseudo.update(load_label_png(_WORKER["label_dir"] / f"{item['id']}.png"), item["mask"])
    return matrix.matrix.numpy(), pseudo


def run_pool(function, indices: list[int], workers: int, state: dict, desc: str) -> list:
    """``function`` over ``indices`` in ``workers`` processes (in this process when ``workers`` is 1)."""
    if workers <= 1:
        _init_worker(state)
        return [function(i) for i in tqdm(indices, desc=desc, leave=False)]
    context = multiprocessing.get_context("spawn")  # no fork of a process that has run torch
    with context.Pool(workers, initializer=_init_worker, initargs=(state,)) as pool:
        return list(tqdm(pool.imap(function, indices, chunksize=4), total=len(indices), desc=desc, leave=False))


def main(argv=None) -> int:
    args = parse_args(argv)
    config, work_dir = config_from_args(args)
    shard_index, shard_count = parse_shard(args.shard)
    cam_dir, label_dir = work_dir / "cams", work_dir / "labels"
    log = setup_logger("gen_labels", label_dir / "gen_labels.log", True)
    save_config(config, label_dir / "config.yaml")
    data = config.data
    dataset = build_dataset(data.name, data.root, data.label_split, **data.options)
    rule, rule_params, use_crf = label_rule(config, dataset.has_background)
    seed_crf_preset = config.labels.crf if config.labels.crf in ("psa", "deeplab") else "psa"
    indices = list(range(shard_index, len(dataset), shard_count))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    timing = {}

    # 1. multi-scale CAMs of the tagged classes ---------------------------------------------------
    todo = [i for i in indices if args.overwrite or not (cam_dir / f"{dataset.ids[i]}.npy").is_file()]
    if todo:
        checkpoint_path = args.checkpoint or work_dir / "cls" / "best.pt"
        checkpoint = load_checkpoint(checkpoint_path)
        model = build_classifier(**checkpoint["model_args"]).to(device)
        model.load_state_dict(checkpoint["model"])
        model.eval()
        to_tensor = eval_transform()
        offset = int(dataset.has_background)
        start = time.perf_counter()
        for index in tqdm(todo, desc="CAMs"):
            item = dataset[index]
            image = to_tensor(item)["image"]
            cams = multiscale_cam(model, image, config.labels.scales, config.labels.flip)
            cams, tagged = normalize_cams(cams, torch.as_tensor(item["tags"]))
            save_npy(cam_dir / f"{item['id']}.npy", cams=cams.cpu().numpy().astype(np.float16),
                     classes=(tagged.cpu().numpy() + offset).astype(np.int64))
        timing["cam_images_per_s"] = len(todo) / (time.perf_counter() - start)
        log.info("CAMs: %d images from %s, %.2f images/s on %s", len(todo), checkpoint_path,
                 timing["cam_images_per_s"], device)

    # 2. pseudo labels (rule + dense CRF), in a pool of processes --------------------------------
    state = {"dataset": dataset, "rule": rule, "rule_params": rule_params, "use_crf": use_crf,
             "seed_crf_preset": seed_crf_preset,
             "cam_dir": cam_dir, "label_dir": label_dir, "saliency_dir": config.labels.saliency_dir,
             "sweep": config.labels.sweep}
    todo = [i for i in indices if args.overwrite or not (label_dir / f"{dataset.ids[i]}.png").is_file()]
    if todo:
        start = time.perf_counter()
        run_pool(_make_label, todo, args.workers, state, "pseudo labels")
        timing["label_images_per_s"] = len(todo) / (time.perf_counter() - start)
        log.info("pseudo labels: %d images, rule %s, CRF %s, %d worker(s): %.2f images/s", len(todo), rule,
                 config.labels.crf, args.workers, timing["label_images_per_s"])

    if args.vis:
        write_panels(dataset, indices[: args.vis], cam_dir, label_dir, work_dir / "vis")

    # 3. scores, once every image of the split has its pseudo label -------------------------------
    if not dataset.has_masks:
        log.info("split %r has no masks: nothing to score", data.label_split)
        return 0
    if any(not (label_dir / f"{name}.png").is_file() for name in dataset.ids):
        log.info("shard %s done; scores are computed once every shard has finished", args.shard)
        return 0
    metrics_path = label_dir / "metrics.json"
    if metrics_path.is_file() and not timing:  # nothing new since the last scoring
        print(format_report(json.loads(metrics_path.read_text()), dataset.has_background))
        return 0
    everything = list(range(len(dataset)))
    sweep = list(config.labels.sweep) if dataset.has_background else [0.0]
    state["sweep"] = sweep
    seed_matrices = sum(run_pool(_score_seeds, everything, args.workers, state, "seed sweep"))
    curve = [scores_of(m, dataset) for m in seed_matrices]
    best = int(np.nanargmax([c["miou"] for c in curve]))
    state["best_threshold"] = sweep[best]
    results = run_pool(_score_labels, everything, args.workers, state, "seed+CRF and pseudo labels")
    seed_crf = scores_of(sum(r[0] for r in results), dataset)
    pseudo = PseudoLabelMetrics(dataset.num_classes, dataset.has_background, class_names=dataset.class_names)
    for _, part in results:
        pseudo.merge(part)
    pseudo_scores = pseudo.compute()

    metrics = {
        "split": data.label_split, "num_images": len(dataset),
        "protocol": {"scales": config.labels.scales, "flip": config.labels.flip, "rule": rule,
                     **{k: v for k, v in rule_params.items() if k != "crf_preset"}, "crf": config.labels.crf,
                     "seed_crf_preset": seed_crf_preset},
        "seed": {"curve": {f"{t:.2f}": c["miou"] for t, c in zip(sweep, curve)}, "best_threshold": sweep[best],
                 "miou": curve[best]["miou"], "iou_by_class": curve[best]["iou_by_name"]},
        "seed_crf": {"miou": seed_crf["miou"], "iou_by_class": seed_crf["iou_by_name"]},
        "pseudo_label": {"strict_miou": pseudo_scores["strict"]["miou"],
                         "lenient_miou": pseudo_scores["lenient"]["miou"],
                         "labelled_fraction": pseudo_scores["labelled_fraction"],
                         "iou_by_class": pseudo_scores["lenient"]["iou_by_name"]},
        "timing": timing,
    }
    save_json(metrics_path, metrics)
    print(format_report(metrics, dataset.has_background))
    return 0


def scores_of(matrix: np.ndarray, dataset) -> dict:
    """:meth:`ConfusionMatrix.compute` of summed counts."""
    confusion = ConfusionMatrix(dataset.num_classes, class_names=dataset.class_names)
    confusion.matrix += torch.from_numpy(matrix)
    return confusion.compute()


def format_report(metrics: dict, has_background: bool) -> str:
    """The scores as a short text table."""
    lines = [f"split {metrics['split']} ({metrics['num_images']} images), rule {metrics['protocol']['rule']}, "
             f"CRF {metrics['protocol']['crf']}"]
    if has_background:
        lines.append("seed mIoU by background threshold: " + "  ".join(
            f"{t}:{v:.1f}" for t, v in metrics["seed"]["curve"].items()))
    seed, pseudo = metrics["seed"], metrics["pseudo_label"]
    lines += [
        f"seed             {seed['miou']:6.2f}" + (f"  (threshold {seed['best_threshold']:.2f})" if has_background else ""),
        f"seed + CRF       {metrics['seed_crf']['miou']:6.2f}",
        f"pseudo (strict)  {pseudo['strict_miou']:6.2f}",
        f"pseudo (lenient) {pseudo['lenient_miou']:6.2f}  ({pseudo['labelled_fraction']:.1f}% of pixels labelled)",
        format_iou_table({"iou_by_name": pseudo["iou_by_class"]}, header="pseudo-label IoU (lenient)"),
    ]
    return "\n".join(lines)


def write_panels(dataset, indices: list[int], cam_dir: Path, label_dir: Path, vis_dir: Path) -> None:
    """PNG panels image | CAM per tagged class | pseudo label | ground truth, also to TensorBoard."""
    writer = tensorboard_writer(label_dir / "tb", True)
    for index in indices:
        item = dataset[index]
        saved = load_npy(cam_dir / f"{item['id']}.npy")
        names = [dataset.class_names[c] for c in saved["classes"]]
        panel = make_panel(item["image"], saved["cams"].astype(np.float32), names,
                           load_label_png(label_dir / f"{item['id']}.png"), item.get("mask"), dataset.palette)
        save_rgb_png(vis_dir / f"{item['id']}.png", panel)
        writer.add_image(f"labels/{item['id']}", panel, 0, dataformats="HWC")
    writer.close()


if __name__ == "__main__":
    sys.exit(main())
