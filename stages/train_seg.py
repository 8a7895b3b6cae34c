"""Stage 3: train DeepLab-v2 on pseudo labels (or true masks) and evaluate it.

    python stages/train_seg.py --config rca/configs/<exp>.yaml [--set key=value ...]
                               [--work-dir DIR] [--resume] [--overwrite]
    python stages/train_seg.py --config ... --eval-only [--checkpoint FILE]
    torchrun --nproc_per_node=4 stages/train_seg.py --config rca/configs/voc12.yaml

``seg.labels: pseudo`` trains on ``DIR/labels/<id>.png`` written by ``gen_labels``; ``seg.labels: gt``
on the dataset's own masks (the fully supervised benchmarks). Writes
``DIR/seg/{last.pt,best.pt,metrics.json,config.yaml,train.log}``, TensorBoard logs in ``DIR/seg/tb``
and, with ``--eval-only``, the predictions as palette PNGs in ``DIR/seg/predictions/`` and image |
prediction | ground truth panels of the first ones in ``DIR/seg/vis/``.

Training follows DeepLab-v2 (Chen et al., TPAMI 2018, arXiv:1606.00915): SGD with momentum, poly LR
(power 0.9) over ``seg.iterations``, LR x1 for the backbone, x10 for ASPP weights and x20 for ASPP
biases, random scale + flip + crop, cross-entropy with 255 ignored on logits upsampled to the crop
size (summed over the scales and their max fusion with ``seg.multi_scale``), plus the contrastive terms
of ``seg.contrast.losses`` (:func:`rca.losses.build_contrast`; their heads train at LR x10 and, with
their memories, are saved in ``last.pt`` only, never in the exported model). Validation every
``seg.val_interval`` iterations keeps the best checkpoint by val mIoU; ``--resume`` continues from
``last.pt`` exactly, also mid-epoch: each sample's augmentation is drawn from its own seed
(:class:`rca.engine.seeding.SeededItems`). A NaN or infinite loss stops the run naming the term and the
iteration, before anything of that interval is saved; ``--skip-bad`` lists unreadable training images
in ``DIR/seg/skipped.txt`` and trains on, also without the images ``gen_labels --skip-bad`` skipped
(:mod:`rca.data.skip`).
"""

from __future__ import annotations

import argparse
import sys
import time

from rca.cli import make_parser, parse_command_line
from rca.config import add_config_args, config_from_args, config_to_dict


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    add_config_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue from DIR/seg/last.pt")
    parser.add_argument("--overwrite", action="store_true", help="retrain even if DIR/seg is finished")
    parser.add_argument("--eval-only", action="store_true", help="evaluate a checkpoint and save predictions")
    parser.add_argument("--checkpoint", default=None, help="checkpoint for --eval-only (default DIR/seg/best.pt)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="list unreadable training images in DIR/seg/skipped.txt and train without them")
    return parse_command_line(parser, argv)


if __name__ == "__main__":
    parse_args()  # --help, --print-config and argument errors answer here, before the heavy imports below (rca/cli.py)

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from rca.data import build_dataset
from rca.data.pseudo import WithPseudoLabels
from rca.data.skip import SKIPPED_FILE, SkipBad
from rca.data.transforms import denormalize, eval_transform, train_transform
from rca.engine.checkpoint import load_checkpoint
from rca.engine.distributed import barrier, cleanup_distributed, init_distributed, wrap_ddp
from rca.engine.logs import TrainingProgress, peak_memory_mb, setup_logger
from rca.engine.optim import check_finite, grad_scaler, optimizer_step, poly_scheduler, use_amp
from rca.engine.run import EXIT_REFUSED, TrainingRun, iterations_per_epoch
from rca.engine.seeding import SeededItems, derive_seed, seed_everything, seeded_indices, worker_init_fn
from rca.errors import DataError, run_cli
from rca.io import save_json
from rca.losses import build_contrast
from rca.metrics import format_iou_table
from rca.models.deeplab import build_deeplab, deeplab_args, deeplab_param_groups
from rca.segment import evaluate_segmentation, predict_probs, segmentation_loss
from rca.vis import prediction_panel, write_prediction_panels


def batches(dataset, cfg, num_workers: int, seed: int, ctx, start_iteration: int):
    """Yield training batches forever; epoch ``e`` is shuffled from (seed, e), sample ``i`` augmented
    from (seed, e, i).

    Starting at ``start_iteration`` (a resume) skips the batches already seen in that epoch; the
    rest are the batches an uninterrupted run gets, bit for bit.
    """
    per_epoch = len(dataset) // (cfg.batch_size * ctx.world_size)
    epoch, skip = divmod(start_iteration, per_epoch)
    items = SeededItems(dataset)
    while True:
        sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        keys = seeded_indices(list(sampler)[skip * cfg.batch_size:], seed, epoch)
        yield from DataLoader(
            items, batch_size=cfg.batch_size, sampler=keys, num_workers=num_workers, drop_last=True,
            worker_init_fn=worker_init_fn, generator=torch.Generator().manual_seed(derive_seed(seed, epoch, ctx.rank)),
            pin_memory=ctx.device.type == "cuda",
        )
        epoch, skip = epoch + 1, 0


def protocol(cfg) -> dict:
    """The evaluation protocol, recorded next to every score."""
    return {"scales": list(cfg.eval_scales), "flip": cfg.eval_flip, "crf": "deeplab" if cfg.eval_crf else None}


def evaluate(model: nn.Module, val_set, cfg, ctx, prediction_dir=None) -> dict:
    """Val mIoU of ``model`` (bare, not DDP) under the configured protocol, sharded over the ranks.

    Leaves ``model`` in eval mode: the caller switches it back to training after any other
    forward pass on val images (in train mode, batch norm would learn their statistics)."""
    model.eval()
    return evaluate_segmentation(model, val_set, cfg.eval_scales, cfg.eval_flip, protocol(cfg)["crf"],
                                 prediction_dir=prediction_dir, shard=(ctx.rank, ctx.world_size), progress=ctx.is_main)


@torch.inference_mode()
def log_predictions(writer, model: nn.Module, dataset, iteration: int, count: int = 4) -> None:
    """TensorBoard :func:`rca.vis.prediction_panel` rows for the first ``count`` val images.

    ``model`` must be in eval mode (raises ``RuntimeError`` otherwise: a train-mode forward pass
    would update batch-norm statistics with val images)."""
    if model.training:
        raise RuntimeError("log_predictions needs the model in eval mode (batch norm would learn val images)")
    for index in range(min(count, len(dataset))):
        item = dataset[index]
        probs = predict_probs(model, item["image"])
        panel = prediction_panel(denormalize(item["image"]), probs.argmax(0).cpu().numpy(), np.asarray(item["mask"]),
                                 dataset.palette)
        writer.add_image(f"seg/val_{item['id']}", panel, iteration, dataformats="HWC")


def build_train_set(config, work_dir, skip_bad: bool = False):
    """The training split with pseudo labels (``seg.labels: pseudo``) or its own masks (``gt``); with
    ``skip_bad``, without the images that have no pseudo label and with unusable items skipped."""
    cfg, data = config.seg, config.data
    transform = train_transform(cfg.crop_size, scale_range=cfg.scale_range, color_jitter=cfg.color_jitter)
    if cfg.labels == "pseudo":
        base = build_dataset(data.name, data.root, data.train_split, **data.options)
        train_set = WithPseudoLabels(base, work_dir / "labels", transform, skip_missing=skip_bad)
    else:
        train_set = build_dataset(data.name, data.root, data.train_split, transform=transform, **data.options)
        if not train_set.has_masks:
            raise DataError(f"seg.labels=gt but split {data.train_split!r} has no masks; use seg.labels=pseudo")
    return SkipBad(train_set, work_dir / "seg" / SKIPPED_FILE) if skip_bad else train_set


def eval_only(args, config, val_set, out_dir, ctx) -> int:
    """``--eval-only``: score a checkpoint on the val split, write its predictions and panels of the first."""
    cfg, data = config.seg, config.data
    checkpoint_path = args.checkpoint or out_dir / "best.pt"
    checkpoint = load_checkpoint(checkpoint_path, kind="segmentation")
    model = build_deeplab(**checkpoint["model_args"]).to(ctx.device)
    model.load_state_dict(checkpoint["model"])
    result = evaluate(model, val_set, cfg, ctx, prediction_dir=out_dir / "predictions")
    print(format_iou_table(result, val_set.class_names))
    if ctx.is_main:
        save_json(out_dir / "eval_metrics.json",
                  {**result, "protocol": protocol(cfg), "checkpoint": str(checkpoint_path)})
    barrier()  # every rank's predictions are written
    if ctx.is_main:
        raw_val = build_dataset(data.name, data.root, data.val_split, **data.options)
        write_prediction_panels(raw_val, out_dir / "predictions", out_dir / "vis")
    return 0


def train_one_interval(model, contrast, contrast_fn, stream, optimizer, scheduler, scaler, run: TrainingRun, cfg,
                       ctx, writer, progress: TrainingProgress) -> dict:
    """Train up to the next validation point (``seg.val_interval``) or the end; returns the record.

    ``contrast`` is the bare :class:`rca.losses.ContrastLoss`, ``contrast_fn`` the module to call (its
    DDP wrapper under DDP). The record holds the mean total loss (``train_loss``) and the mean of each
    weighted contrastive term (``train_<name>``) over the interval.
    """
    amp = use_amp(cfg.amp, ctx.device)
    start, sums, steps, iteration = time.perf_counter(), {}, 0, run.done
    while steps == 0 or (iteration % cfg.val_interval and iteration < cfg.iterations):
        batch = next(stream)
        images = batch["image"].to(ctx.device, non_blocking=True)
        masks = batch["mask"].to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, enabled=amp):
            outputs = model(images, return_stages=contrast.needs_stages)
            terms = contrast_fn(outputs, masks, iteration) if len(contrast.losses) else {}
            loss = segmentation_loss(outputs, masks) + sum(terms.values())
        optimizer_step(loss, optimizer, scheduler, scaler)
        values = {"loss": loss, **terms}  # one device sync for all of them:
        values = dict(zip(values, torch.stack([v.detach().float() for v in values.values()]).tolist()))
        check_finite(values, f"iteration {iteration + 1}/{cfg.iterations}", "seg.lr")
        iteration, steps = iteration + 1, steps + 1
        sums = {name: sums.get(name, 0.0) + value for name, value in values.items()}
        progress.step(values, optimizer.param_groups[0]["lr"])
        if writer is not None and iteration % cfg.log_interval == 0:
            for name, value in values.items():
                writer.add_scalar(f"seg/{name}", value, iteration)
            writer.add_scalar("seg/lr", optimizer.param_groups[0]["lr"], iteration)
    return {"iteration": iteration, **{f"train_{name}": total / steps for name, total in sums.items()},
            "s_per_iter": (time.perf_counter() - start) / steps, "peak_memory_mb": peak_memory_mb(ctx.device)}


def main(argv=None) -> int:
    args = parse_args(argv)
    config, work_dir = config_from_args(args)
    cfg, data, out_dir = config.seg, config.data, work_dir / "seg"
    ctx = init_distributed(args.device)
    log = setup_logger("train_seg", out_dir / "train.log", ctx.is_main)
    if not data.val_split and (args.eval_only or cfg.val_interval):
        log.warning("no data.val_split: the model is trained but not evaluated")
    val_set = None
    if data.val_split:
        val_set = build_dataset(data.name, data.root, data.val_split, transform=eval_transform(), **data.options)
        if not val_set.has_masks:
            raise DataError(f"data.val_split={data.val_split!r} has no masks to evaluate against")
    if args.eval_only:
        return eval_only(args, config, val_set, out_dir, ctx)
    run = TrainingRun(out_dir, cfg.iterations, "iterations", "val_miou", log)
    if (exit_code := run.check(args.resume, args.overwrite, ctx.is_main)) is not None:
        return exit_code

    train_set = build_train_set(config, work_dir, args.skip_bad)
    # a split smaller than one batch stops here, naming seg.batch_size
    iterations_per_epoch(len(train_set), cfg.batch_size, ctx.world_size, data.train_split, "seg.batch_size")
    model_args = deeplab_args(cfg, train_set.num_classes)
    seed_everything(config.seed)  # the random initialisation follows the config's seed
    raw_model = build_deeplab(**model_args).to(ctx.device)
    if ctx.distributed and cfg.sync_bn and not cfg.freeze_bn:
        raw_model = nn.SyncBatchNorm.convert_sync_batchnorm(raw_model)
    model = wrap_ddp(raw_model, ctx)
    contrast = build_contrast(cfg.contrast, train_set.num_classes, raw_model.backbone, len(train_set)).to(ctx.device)
    groups = deeplab_param_groups(raw_model, cfg.lr)
    contrast_fn, training_modules = contrast, {}
    if len(contrast.losses):  # never wrap or save an empty one (DDP refuses a module without parameters)
        # memories: every rank already stores all ranks' entries, nothing to broadcast
        contrast_fn = wrap_ddp(contrast, ctx, sync_buffers=False)
        groups.append({"params": list(contrast.parameters()), "lr": cfg.lr * 10, "lr_mult": 10})  # new layers
        training_modules = {"contrast": contrast}
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = poly_scheduler(optimizer, cfg.iterations)
    scaler = grad_scaler(cfg.amp, ctx.device)
    if not run.restore(raw_model, optimizer, scheduler, scaler, "seg.iterations", training_modules):
        return EXIT_REFUSED

    writer = run.open_outputs(config, ctx.is_main)
    log.info("%d training images (%s labels), %d iterations, batch %d x %d, device %s, contrast %s",
             len(train_set), cfg.labels, cfg.iterations, cfg.batch_size, ctx.world_size, ctx.device,
             list(cfg.contrast.losses) or "none")
    stream = batches(train_set, cfg, data.num_workers, config.seed, ctx, run.done)
    model.train()
    with TrainingProgress(log, cfg.iterations, run.done, cfg.log_interval, ctx.device, "train_seg",
                          ctx.is_main) as progress:
        while run.done < cfg.iterations:
            record = train_one_interval(model, contrast, contrast_fn, stream, optimizer, scheduler, scaler, run, cfg,
                                        ctx, writer, progress)
            if val_set is not None:
                result = evaluate(raw_model, val_set, cfg, ctx)
                record.update(val_miou=result["miou"], val_iou=result["iou_by_name"])
                if writer is not None:
                    writer.add_scalar("seg/val_miou", result["miou"], record["iteration"])
                    log_predictions(writer, raw_model, val_set, record["iteration"])
                model.train()
            improved = run.add(record, done=record["iteration"])
            log.info("iteration %d: loss %.4f, %.3f s/iter%s", record["iteration"], record["train_loss"],
                     record["s_per_iter"], f", val mIoU {record['val_miou']:.2f}" if "val_miou" in record else "")
            if ctx.is_main:
                save_run(run, raw_model, model_args, train_set, config, improved, optimizer, scheduler, scaler,
                         training_modules)
    if writer is not None:
        writer.close()
    cleanup_distributed()
    return 0


def save_run(run: TrainingRun, model, model_args: dict, train_set, config, improved: bool, optimizer, scheduler,
             scaler, training_modules: dict) -> None:
    """``metrics.json``, ``best.pt`` and ``last.pt`` (with what ``infer.py`` needs: architecture, class names,
    palette); ``training_modules`` (the contrastive heads and memories) go into ``last.pt`` only."""
    state = {"kind": "segmentation", "model": model.state_dict(), "model_args": {**model_args, "pretrained": "none"},
             "class_names": train_set.class_names, "palette": train_set.palette.tolist(), "iteration": run.done,
             "config": config_to_dict(config)}
    best = run.best_record()
    metrics = {
        "labels": config.seg.labels, "iterations_done": run.done, "iterations": config.seg.iterations,
        "best_val_miou": best.get("val_miou"), "iou_by_class": best.get("val_iou"),
        "protocol": protocol(cfg=config.seg), "history": run.history,
    }
    run.save(state, improved, optimizer, scheduler, scaler, metrics, training_modules)


if __name__ == "__main__":
    sys.exit(run_cli(main))
