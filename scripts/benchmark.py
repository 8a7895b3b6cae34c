"""Speed of the pipeline's hot paths against its own baselines, in one process, on this machine.

    python scripts/benchmark.py [--config rca/configs/demo.yaml] [--set key=value ...] [--quick]
                                [--json FILE] [--repeats N] [--warmup N] [--batch N] [--threads N]
                                [--device cpu|cuda] [--peak-tflops X] [--sections S ...]
                                [--pool-workers N]

Each number is the median of ``--repeats`` timed calls after ``--warmup`` untimed ones. The calls
compared in a ratio are timed round-robin in this process (one call of each per round), so a
change of machine load hits them alike. Random weights; the first images of
``data.label_split`` with the stages' training augmentation (tags, true masks) at the config's
crop size and batch; no stage outputs are needed. Printed, and with ``--json FILE`` written atomically:

* ``cls``: the classifier's training step (forward, loss, backward, SGD, memory write) for
  ``method: cam`` and for ``method: rca`` in its steady state: memory bank full
  (:meth:`rca.memory.RegionalMemory.fill_random`), k-means centres computed (aggregation active),
  semantic contrast on (past its warm-up), every tagged region written back (a trained classifier
  passes ``cls.write_threshold`` for most of them; at random init none would). The ratio rca / cam
  (target at most 1.15) and the shares of the rca step: ``cam_step``; ``contrast``, ``aggregation``
  and ``write`` (memory write), each the time saved by switching that part alone off; ``heads``, the
  rest (embedding head, fine head, region pooling, and the embedding head's backward, which
  runs while contrast or aggregation needs it). ``update_centres_s``: the k-means, once per epoch.
* ``cam_inference``: multi-scale CAMs of one image (``labels.scales``, ``labels.flip``), both
  classifiers.
* ``crf``: the dense CRF of one image over background + its tagged classes (what
  :mod:`rca.pseudo_labels` runs) and over all labels (at least VOC's 21); target: the restricted
  one at least 2x faster.
* ``seg``: DeepLab-v2's training step with cross-entropy alone and with each loss of
  ``seg.contrast`` (memories full, past warm-up) and each loss's added share of the step (target at
  most 10 %); inference of one image (``seg.eval_scales``, ``seg.eval_flip``).
* ``where_time_goes`` for every step over its target: the step's ``torch.profiler`` ranges
  (forward, contrast, backward, optimizer, memory write) and the operators whose self time grew
  most, against its baseline (up to 3 profiled calls each).
* FLOPs of each timed call (``torch.utils.flop_counter.FlopCounterMode``, forward and backward) and
  the FLOP/s reached; as a fraction of ``--peak-tflops`` (the device's datasheet peak) when given.
  No peak is assumed: for a CPU there is none to look up.
* ``pool`` (not with ``--quick``): gen_labels' worker pool (:class:`rca.engine.pool.WorkerPool`
  with the config's :class:`rca.labelling.LabelJob`): the first phase pays the processes'
  start-up, a later phase of the same run reuses them.
* peak memory, thread count, load average before and after (the machine may be shared).

``--quick``: 3 repeats, 1 warm-up, batches capped at 4, no pool (under a minute on a 2-core CPU
with the demo config). ``--sections`` picks parts (e.g. ``--sections cls crf``). Mixed precision is
not used (fp32 steps on every device). On a shared machine, ``--threads 1`` keeps the numbers
steadier (torch's threads spin while other processes hold the cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rca.cli import make_parser, parse_command_line
from rca.config import add_config_args
from rca.errors import run_cli

SECTIONS = ("cls", "cam_inference", "crf", "seg", "pool")


def parse_args(argv=None) -> argparse.Namespace:
    parser = add_config_args(make_parser(__doc__))
    parser.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up, batches capped at 4, no pool")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls of each measurement (default 10; quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first, >= 1 (default 2; quick 1)")
    parser.add_argument("--batch", type=int, default=None, help="cap the config's batch sizes (quick: 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s (datasheet, at the precision used) to report utilisation")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=None, metavar="S",
                        help=f"measure only these, of {' '.join(SECTIONS)} (default: all; quick: all but pool)")
    parser.add_argument("--pool-workers", type=int, default=2, help="processes of the gen_labels pool measured (default 2)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file (atomically)")
    args = parse_command_line(parser, argv)
    for name in ("repeats", "warmup", "batch", "threads", "pool_workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


if __name__ == "__main__":
    parse_args()  # --help, --print-config and argument errors answer here, before the heavy imports below (rca/cli.py)

import numpy as np
import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from rca.cam import multiscale_cam, normalize_cams
from rca.classify import region_contrast_loss
from rca.config import config_from_args
from rca.crf import dense_crf
from rca.data import build_dataset
from rca.data.transforms import eval_transform, train_transform
from rca.engine.logs import peak_memory_mb
from rca.engine.pool import WorkerPool
from rca.io import save_json
from rca.labelling import seed_crf_preset
from rca.losses import CONTRAST_LOSSES, build_contrast
from rca.memory import RegionalMemory
from rca.models.classifier import build_classifier, classifier_args, rca_classification_loss
from rca.models.deeplab import build_deeplab, deeplab_args
from rca.pseudo_labels import probabilities_with_background
from rca.segment import predict_probs, segmentation_loss
from stages.gen_labels import build_job

TARGET_RCA_OVER_CAM = 1.15  # issue 14: the released RCA code costs 5.3x its CAM baseline
TARGET_CRF_SPEEDUP = 2.0  # restricted to the tagged classes vs all labels
TARGET_CONTRAST_SHARE = 0.10  # issue 9: each contrastive loss adds at most 10 % to the DeepLab step
VOC_LABELS = 21  # background + 20 classes: the "all classes" CRF has at least this many labels
RCA_PARTS = ("contrast", "aggregation", "write")  # switched off one at a time
MET = {True: "met", False: "MISSED"}


class Timer:
    """Times named calls round-robin on one device and counts their FLOPs."""

    def __init__(self, device: torch.device, repeats: int, warmup: int) -> None:
        self.device, self.repeats, self.warmup = device, repeats, warmup

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self, calls: dict[str, Callable[[], object]]) -> dict[str, dict]:
        """``{name: {"s": median seconds, "runs": [seconds...], "gflop": forward + backward GFLOPs}}``.

        The first warm-up call of each runs under ``FlopCounterMode``; the timed calls follow in
        ``repeats`` rounds of one call of each.
        """
        results = {}
        for name, call in calls.items():
            with FlopCounterMode(display=False) as counter:
                call()
            for _ in range(self.warmup - 1):
                call()
            results[name] = {"runs": [], "gflop": counter.get_total_flops() / 1e9}
        for _ in range(self.repeats):
            for name, call in calls.items():
                self.sync()
                start = time.perf_counter()
                call()
                self.sync()
                results[name]["runs"].append(time.perf_counter() - start)
        for result in results.values():
            result["s"] = statistics.median(result["runs"])
        return results

    def profile_ops(self, call: Callable[[], object]) -> dict[str, float]:
        """Mean ms per call of ``call`` (over ``min(repeats, 3)`` calls) of each ``step/...``
        ``record_function`` range (total) and each operator (self time), from ``torch.profiler``."""
        calls = min(self.repeats, 3)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(calls):
                call()
            self.sync()
        kind = "device" if self.device.type == "cuda" else "cpu"  # GPU kernels' time on a GPU
        times = {}
        for event in prof.key_averages():
            total = getattr(event, f"{kind}_time_total" if event.key.startswith("step/") else f"self_{kind}_time_total")
            times[event.key] = times.get(event.key, 0.0) + total / 1e3 / calls
        return times

    def where_time_goes(self, call: Callable[[], object], baseline: Callable[[], object], top: int = 6) -> dict:
        """The step's ``step/...`` ranges in ms (its own and the baseline's) and the ``top``
        operators whose self time grew most over the baseline's (:meth:`profile_ops`)."""
        ops, base = self.profile_ops(call), self.profile_ops(baseline)
        ranges = {key: {"ms": round(ms, 2), "baseline_ms": round(base.get(key, 0.0), 2)}
                  for key, ms in ops.items() if key.startswith("step/")}
        grown = sorted(((ms - base.get(key, 0.0), key) for key, ms in ops.items() if not key.startswith("step/")),
                       reverse=True)[:top]
        return {"ranges": ranges, "ops_added_ms": {key: round(ms, 2) for ms, key in grown}}


def flop_rate(result: dict, peak_tflops: float | None) -> None:
    """Add ``gflop_per_s`` and, with a peak, ``peak_fraction`` to a :meth:`Timer.measure` entry."""
    result["gflop_per_s"] = result["gflop"] / result["s"]
    result["peak_fraction"] = result["gflop_per_s"] / (peak_tflops * 1e3) if peak_tflops else None


def training_batch(dataset, transform, batch: int) -> dict[str, torch.Tensor]:
    """Items ``0 .. batch - 1`` of ``dataset`` (cycling) through a training ``transform``, stacked:
    ``image`` ``(B, 3, crop, crop)``, ``tags`` and, where the items have masks, ``mask``. The
    augmentation draws follow torch's seed 0."""
    torch.manual_seed(0)
    items = [transform(dataset[i % len(dataset)]) for i in range(batch)]
    return {key: torch.stack([torch.as_tensor(item[key]) for item in items])
            for key in ("image", "tags", "mask") if key in items[0]}


def classifier_step(model, images: torch.Tensor, tags: torch.Tensor, cls, contrast: bool, write: bool) -> Callable:
    """One training step of ``train_cls`` (without AMP and logging) as a closure returning the
    outputs and the contrast loss. With ``write`` every tagged region is pushed (threshold 0)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        with record_function("step/forward"):
            outputs = model(images, tags)
            loss = rca_classification_loss(outputs, tags, cls.coarse_weight)
        loss_con = torch.zeros(())
        if contrast:
            with record_function("step/contrast"):
                loss_con = region_contrast_loss(outputs, model.memory, cls)
                loss = loss + cls.contrast_weight * loss_con
        with record_function("step/backward"):
            optimizer.zero_grad()
            loss.backward()
        with record_function("step/optimizer"):
            optimizer.step()
        if write:
            with record_function("step/memory_write"):
                model.memory.push(*model.memory_candidates(outputs, threshold=0.0))
        return outputs, loss_con

    return step


def steady_rca_classifier(cls, num_tags: int, device: torch.device, aggregation: bool = True):
    """An ``method: rca`` classifier (random weights, seed 0) in its steady state: memory full of
    random unit vectors, k-means centres computed; with ``aggregation=False`` no centre is valid
    (the state before the first k-means: the context is zero)."""
    torch.manual_seed(0)
    model = build_classifier(**{**classifier_args(cls, num_tags), "pretrained": "none", "method": "rca"}).to(device)
    model.memory.fill_random(torch.Generator(device=device).manual_seed(0))
    model.update_centres()
    if not aggregation:
        model.centre_valid.zero_()
    return model


def classifiers(cls, num_tags: int, device: torch.device) -> dict:
    """``{"cam": the method-cam classifier, "rca": the steady-state rca one}``, random weights (seed 0)."""
    torch.manual_seed(0)
    cam = build_classifier(**{**classifier_args(cls, num_tags), "pretrained": "none", "method": "cam"}).to(device)
    return {"cam": cam, "rca": steady_rca_classifier(cls, num_tags, device)}


def classifier_section(cls, dataset, device: torch.device, batch: int, timer: Timer, peak) -> tuple[dict, dict]:
    """The ``cls`` results and the two classifiers of :func:`classifiers` (in eval mode, for CAM inference).

    The batch is ``batch`` images of the label split with ``train_cls``'s augmentation, and their tags.
    """
    transform = train_transform(cls.crop_size, resize_long=cls.resize_long, color_jitter=cls.color_jitter)
    data = training_batch(dataset, transform, batch)
    images, tags = data["image"].to(device), data["tags"].to(device)
    num_tags = tags.shape[1]
    models = classifiers(cls, num_tags, device)
    steps = {"cam": classifier_step(models["cam"], images, tags, cls, contrast=False, write=False),
             "rca": classifier_step(models["rca"], images, tags, cls, contrast=True, write=True)}
    for part in RCA_PARTS:  # the steady-state step with one part switched off
        model = steady_rca_classifier(cls, num_tags, device, aggregation=part != "aggregation")
        steps[f"rca_no_{part}"] = classifier_step(model, images, tags, cls, part != "contrast", part != "write")
    times = timer.measure(steps)
    for result in times.values():
        flop_rate(result, peak)

    outputs, loss_con = steps["rca"]()
    rca = models["rca"]
    attention = outputs.get("attention")
    steady = {"memory_entries": len(rca.memory), "memory_slots": rca.memory.num_classes * rca.memory.size,
              "centres": 0 if attention is None else attention.shape[-1], "contrast_loss": float(loss_con.detach())}
    if steady["memory_entries"] < steady["memory_slots"] or not steady["centres"] or not steady["contrast_loss"] > 0:
        raise RuntimeError(f"the rca step was not timed in its steady state: {steady}")

    t = {name: result["s"] for name, result in times.items()}
    parts = {"cam_step": t["cam"], **{part: t["rca"] - t[f"rca_no_{part}"] for part in RCA_PARTS}}
    parts["heads"] = t["rca"] - sum(parts.values())
    ratio = t["rca"] / t["cam"]
    centres_s = timer.measure({"update_centres": rca.update_centres})["update_centres"]["s"]
    result = {"batch": batch, "crop_size": cls.crop_size, "backbone": cls.backbone, "steps": times,
              "rca_over_cam": ratio, "target": TARGET_RCA_OVER_CAM, "target_met": ratio <= TARGET_RCA_OVER_CAM,
              "shares": {name: s / t["rca"] for name, s in parts.items()}, "steady_state": steady,
              "update_centres_s": centres_s}
    if ratio > TARGET_RCA_OVER_CAM:
        result["where_time_goes"] = timer.where_time_goes(steps["rca"], steps["cam"])
    for model in models.values():
        model.eval()
    return result, models


def cam_inference_section(models: dict, image: torch.Tensor, labels_cfg, timer: Timer, peak) -> dict:
    """Multi-scale CAMs of one image with each classifier."""
    calls = {name: (lambda m=model: multiscale_cam(m, image, labels_cfg.scales, labels_cfg.flip))
             for name, model in models.items()}
    times = timer.measure(calls)
    for result in times.values():
        flop_rate(result, peak)
    return {"image_size": list(image.shape[1:]), "scales": list(labels_cfg.scales), "flip": labels_cfg.flip,
            "per_image": times, "rca_over_cam": times["rca"]["s"] / times["cam"]["s"]}


def crf_section(model, item: dict, tensor_image: torch.Tensor, dataset, config, timer: Timer) -> dict:
    """The dense CRF of one image over background + its tagged classes vs over all labels.

    Both runs get the same scores: the restricted stack ``[background, tagged CAMs]`` and the same
    stack padded with zero-probability channels up to the full label count (the Potts CRF is
    invariant to the order of the labels, so where the padding goes does not change its cost).
    """
    cams, tagged = normalize_cams(multiscale_cam(model, tensor_image, config.labels.scales, config.labels.flip),
                                  torch.as_tensor(item["tags"]))
    restricted = probabilities_with_background(cams.cpu().numpy(), config.labels.bg_threshold)
    num_all = max(VOC_LABELS, dataset.num_classes)
    padding = np.zeros((num_all - restricted.shape[0], *restricted.shape[1:]), np.float32)
    full = np.concatenate([restricted, padding])
    preset = seed_crf_preset(config.labels.crf)
    rgb = np.ascontiguousarray(item["image"])
    times = timer.measure({"restricted": lambda: dense_crf(rgb, restricted, preset),
                           "all": lambda: dense_crf(rgb, full, preset)})
    speedup = times["all"]["s"] / times["restricted"]["s"]
    return {"image_size": list(rgb.shape[:2]), "preset": preset, "tagged": len(tagged),
            "restricted_labels": restricted.shape[0], "all_labels": num_all,
            "restricted_s": times["restricted"]["s"], "all_s": times["all"]["s"], "runs": times,
            "speedup": speedup, "target": TARGET_CRF_SPEEDUP, "target_met": speedup >= TARGET_CRF_SPEEDUP}


def seg_step(model, contrast, images: torch.Tensor, masks: torch.Tensor) -> Callable:
    """One training step of ``train_seg`` (without AMP and logging) as a closure."""
    optimizer = torch.optim.SGD([*model.parameters(), *contrast.parameters()], lr=1e-3, momentum=0.9)

    def step():
        with record_function("step/forward"):
            outputs = model(images, return_stages=contrast.needs_stages)
            loss = segmentation_loss(outputs, masks)
        with record_function("step/contrast"):
            loss = loss + sum(contrast(outputs, masks, 0).values())
        with record_function("step/backward"):
            optimizer.zero_grad()
            loss.backward()
        with record_function("step/optimizer"):
            optimizer.step()

    return step


def seg_section(seg, dataset, image: torch.Tensor, device: torch.device, batch: int, timer: Timer, peak) -> dict:
    """DeepLab-v2 training step with cross-entropy alone and with each contrastive loss, and
    inference of one image.

    The batch is ``batch`` images of the label split with ``train_seg``'s augmentation and their
    true masks (standing in for pseudo labels: the anchor samplers need real regions); every
    memory is full (:meth:`rca.memory.RegionalMemory.fill_random`). Contextrast is left out
    (``skipped``) for backbones without stages.

    Raises:
        ValueError: the label split has no masks.
    """
    if not dataset.has_masks:
        raise ValueError("the DeepLab step needs masks in the images of data.label_split")
    transform = train_transform(seg.crop_size, scale_range=seg.scale_range, color_jitter=seg.color_jitter)
    data = training_batch(dataset, transform, batch)
    images, masks = data["image"].to(device), data["mask"].to(device)
    num_classes, num_train_images = dataset.num_classes, len(dataset)
    steps, models = {}, {}
    for name in ("ce",) + CONTRAST_LOSSES:
        torch.manual_seed(0)
        model = build_deeplab(**{**deeplab_args(seg, num_classes), "pretrained": "none"}).to(device)
        cfg = dataclasses.replace(seg.contrast, losses=[] if name == "ce" else [name], warmup_iters=0)
        try:
            contrast = build_contrast(cfg, num_classes, model.backbone, num_train_images).to(device)
        except NotImplementedError:
            continue
        for memory in (m for m in contrast.modules() if isinstance(m, RegionalMemory)):
            memory.fill_random(torch.Generator(device=device).manual_seed(0))
        steps[name], models[name] = seg_step(model, contrast, images, masks), model
    times = timer.measure(steps)
    for result in times.values():
        flop_rate(result, peak)
    added = {name: times[name]["s"] / times["ce"]["s"] - 1 for name in steps if name != "ce"}
    result = {"batch": batch, "crop_size": seg.crop_size, "backbone": seg.backbone, "steps": times,
              "added_share": added, "target_added_share": TARGET_CONTRAST_SHARE,
              "target_met": {name: share <= TARGET_CONTRAST_SHARE for name, share in added.items()},
              "skipped": [name for name in CONTRAST_LOSSES if name not in steps]}
    over = [name for name, share in added.items() if share > TARGET_CONTRAST_SHARE]
    if over:
        result["where_time_goes"] = {name: timer.where_time_goes(steps[name], steps["ce"]) for name in over}
    model = models["ce"].eval()
    with torch.inference_mode():
        infer = timer.measure({"inference": lambda: predict_probs(model, image, seg.eval_scales, seg.eval_flip)})
    flop_rate(infer["inference"], peak)
    result["inference"] = {"image_size": list(image.shape[1:]), "scales": list(seg.eval_scales),
                           "flip": seg.eval_flip, **infer["inference"]}
    return result


class PoolProbe:
    """A worker-pool context that carries gen_labels' :class:`rca.labelling.LabelJob` (so each
    worker unpickles what gen_labels' workers do) and answers with the worker's process id."""

    def __init__(self, job) -> None:
        self.job = job

    def pid(self, _item) -> int:
        return os.getpid()


def pool_section(config, workers: int) -> dict:
    """Two phases of trivial tasks on one gen_labels worker pool: the first pays the start-up."""
    with tempfile.TemporaryDirectory() as work_dir, WorkerPool(PoolProbe(build_job(config, Path(work_dir))), workers) as pool:
        phases = []
        for phase in ("first", "second"):
            start = time.perf_counter()
            pids = pool.map("pid", range(4 * workers), f"pool, {phase} phase")
            phases.append((time.perf_counter() - start, set(pids)))
    return {"workers": workers, "first_phase_s": phases[0][0], "second_phase_s": phases[1][0],
            "same_processes": phases[1][1] <= phases[0][1]}


def _steps(steps: dict) -> list[str]:
    return [f"  {name:20} {r['s']:8.4f} s  {r['gflop']:9.2f} GFLOP  {r['gflop_per_s']:8.1f} GFLOP/s"
            + (f"  {100 * r['peak_fraction']:.1f} % of peak" if r.get("peak_fraction") else "")
            for name, r in steps.items()]


def _where(name: str, where: dict) -> str:
    ranges = ", ".join(f"{k[5:]} {v['ms']:.0f} (baseline {v['baseline_ms']:.0f})" for k, v in where["ranges"].items())
    ops = ", ".join(f"{k} +{v:.0f}" for k, v in where["ops_added_ms"].items())
    return f"  where the time of {name} goes (ms per call, profiled): {ranges}; ops: {ops}"


def report(results: dict) -> str:
    """The results as a short text report (the sections present)."""
    lines = [f"config {results['config']}, device {results['device']}, {results['threads']} threads, "
             f"median of {results['repeats']} after {results['warmup']} warm-up, load average "
             f"{results['load_average'][0]:.2f} -> {results['load_average'][1]:.2f}"]
    if cls := results.get("cls"):
        lines += [f"classifier step, {cls['backbone']}, batch {cls['batch']}, crop {cls['crop_size']}:",
                  *_steps(cls["steps"]),
                  f"  rca / cam = {cls['rca_over_cam']:.3f} (target <= {cls['target']}: {MET[cls['target_met']]})",
                  "  share of the rca step: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in cls["shares"].items()),
                  f"  steady state: {cls['steady_state']}; k-means update_centres {cls['update_centres_s']:.4f} s"]
        if "where_time_goes" in cls:
            lines.append(_where("the rca step", cls["where_time_goes"]))
    if cam := results.get("cam_inference"):
        lines += [f"CAM inference per image {cam['image_size']}, scales {cam['scales']}, flip {cam['flip']}:",
                  *_steps(cam["per_image"])]
    if crf := results.get("crf"):
        lines.append(f"dense CRF per image {crf['image_size']} ({crf['preset']}): {crf['restricted_labels']} labels "
                     f"{crf['restricted_s']:.4f} s, {crf['all_labels']} labels {crf['all_s']:.4f} s, speed-up "
                     f"{crf['speedup']:.2f} (target >= {crf['target']}: {MET[crf['target_met']]})")
    if seg := results.get("seg"):
        lines += [f"DeepLab-v2 step, {seg['backbone']}, batch {seg['batch']}, crop {seg['crop_size']}:",
                  *_steps(seg["steps"]),
                  "  added share: " + ", ".join(f"{k} {100 * v:+.1f} % ({MET[seg['target_met'][k]]})"
                                                for k, v in seg["added_share"].items())
                  + f" (target <= {100 * seg['target_added_share']:.0f} %)",
                  *(_where(name, where) for name, where in seg.get("where_time_goes", {}).items()),
                  f"  inference per image {seg['inference']['image_size']}: {seg['inference']['s']:.4f} s, "
                  f"{seg['inference']['gflop']:.2f} GFLOP"]
    if pool := results.get("pool"):
        lines.append(f"gen_labels pool, {pool['workers']} workers: first phase {pool['first_phase_s']:.2f} s "
                     f"(start-up), second phase {pool['second_phase_s']:.3f} s, same processes {pool['same_processes']}")
    lines.append(f"peak memory {results['peak_memory_mb']:.0f} MiB")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 10)
    warmup = args.warmup or (1 if args.quick else 2)
    cap = args.batch or (4 if args.quick else None)
    sections = args.sections or [name for name in SECTIONS if not (args.quick and name == "pool")]
    if args.threads:
        torch.set_num_threads(args.threads)
    config, _ = config_from_args(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    timer, peak = Timer(device, repeats, warmup), args.peak_tflops
    data, cls, seg = config.data, config.cls, config.seg
    dataset = build_dataset(data.name, data.root, data.label_split, **data.options)
    item = dataset[0]
    image = eval_transform()(item)["image"]
    results = {"command": " ".join(["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)]),
               "config": config.name, "device": str(device), "threads": torch.get_num_threads(),
               "repeats": repeats, "warmup": warmup, "peak_tflops": peak, "load_average": [os.getloadavg()[0]]}

    models = None
    if "cls" in sections:
        results["cls"], models = classifier_section(cls, dataset, device, min(cls.batch_size, cap or cls.batch_size),
                                                    timer, peak)
    if {"cam_inference", "crf"} & set(sections):
        models = models or {name: model.eval() for name, model in
                            classifiers(cls, dataset.label_space.num_tags, device).items()}
        with torch.inference_mode():
            if "cam_inference" in sections:
                results["cam_inference"] = cam_inference_section(models, image, config.labels, timer, peak)
            if "crf" in sections:
                results["crf"] = crf_section(models["rca"], item, image, dataset, config, timer)
    if "seg" in sections:
        results["seg"] = seg_section(seg, dataset, image, device, min(seg.batch_size, cap or seg.batch_size), timer, peak)
    if "pool" in sections:
        results["pool"] = pool_section(config, args.pool_workers)
    results["peak_memory_mb"] = peak_memory_mb(device)
    results["load_average"].append(os.getloadavg()[0])
    print(report(results))
    if args.json:
        save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
