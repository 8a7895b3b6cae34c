"""Stage 3: train DeepLab-v2 on pseudo labels (or true masks) and evaluate it.

    python stages/train_seg.py --config rca/configs/<exp>.yaml [--set key=value ...]
                               [--work-dir DIR] [--resume] [--overwrite]
    python stages/train_seg.py --config ... --eval-only [--checkpoint FILE]
    torchrun --nproc_per_node=4 stages/train_seg.py --config rca/configs/voc12.yaml

``seg.labels: pseudo`` trains on ``DIR/labels/<id>.png`` written by ``gen_labels``; ``seg.labels: gt``
on the dataset's own masks (the fully supervised benchmarks). Writes
``DIR/seg/{last.pt,best.pt,metrics.json,config.yaml,train.log}``, TensorBoard logs in ``DIR/seg/tb``
and, with ``--eval-only``, the predictions as palette PNGs in ``DIR/seg/predictions/``.

Training follows DeepLab-v2 (Chen et al., TPAMI 2018): SGD with momentum, poly LR (power 0.9) over
``seg.iterations``, LR x1 for the backbone, x10 for ASPP weights and x20 for ASPP biases, random
scale + flip + crop, cross-entropy with 255 ignored on logits upsampled to the crop size (summed over
the scales and their max fusion with ``seg.multi_scale``). Validation every ``seg.val_interval``
iterations keeps the best checkpoint by val mIoU; ``--resume`` continues from ``last.pt``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from rca.config import add_config_args, config_from_args, config_to_dict, save_config
from rca.data import build_dataset
from rca.data.pseudo import WithPseudoLabels
from rca.data.transforms import denormalize, eval_transform, train_transform
from rca.engine.checkpoint import load_checkpoint, restore_training_state, save_training_state
from rca.engine.distributed import cleanup_distributed, init_distributed, unwrap
from rca.engine.logs import peak_memory_mb, setup_logger, tensorboard_writer
from rca.engine.seeding import seed_epoch, seed_everything, worker_init_fn
from rca.io import save_json
from rca.models.deeplab import build_deeplab, deeplab_args, deeplab_param_groups
from rca.metrics import format_iou_table
from rca.segment import evaluate_segmentation, predict_probs, segmentation_loss


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue from DIR/seg/last.pt")
    parser.add_argument("--overwrite", action="store_true", help="retrain even if DIR/seg is finished")
    parser.add_argument("--eval-only", action="store_true", help="evaluate a checkpoint and save predictions")
    parser.add_argument("--checkpoint", default=None, help="checkpoint for --eval-only (default DIR/seg/best.pt)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return parser.parse_args(argv)


def batches(dataset, cfg, num_workers: int, seed: int, ctx, start_iteration: int):
    """Yield training batches forever; epoch ``e`` is shuffled and augmented from (seed, e, rank).

    Starting at ``start_iteration`` (a resume) skips the batches already seen in that epoch.
    """
    per_epoch = len(dataset) // (cfg.batch_size * ctx.world_size)
    epoch, skip = divmod(start_iteration, per_epoch)
    while True:
        sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        indices = list(sampler)[skip * cfg.batch_size:]
        yield from DataLoader(
            dataset, batch_size=cfg.batch_size, sampler=indices, num_workers=num_workers,
            drop_last=True, worker_init_fn=worker_init_fn, generator=seed_epoch(seed, epoch, ctx.rank),
            pin_memory=ctx.device.type == "cuda",
        )
        epoch, skip = epoch + 1, 0


def protocol(cfg) -> dict:
    """The evaluation protocol, recorded next to every score."""
    return {"scales": list(cfg.eval_scales), "flip": cfg.eval_flip, "crf": "deeplab" if cfg.eval_crf else None}


def log_predictions(writer, model: nn.Module, dataset, iteration: int, count: int = 4) -> None:
    """TensorBoard panels (image | prediction | ground truth) for the first ``count`` val images."""
    for index in range(min(count, len(dataset))):
        item = dataset[index]
        probs = predict_probs(model, item["image"])
        colour = lambda label: dataset.palette[label.clip(0, 255)]  # noqa: E731  (H, W) -> (H, W, 3)
        panel = np.concatenate(
            [denormalize(item["image"]), colour(probs.argmax(0).cpu().numpy()), colour(np.asarray(item["mask"]))], axis=1
        )
        writer.add_image(f"seg/val_{item['id']}", panel, iteration, dataformats="HWC")


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
            raise ValueError(f"data.val_split={data.val_split!r} has no masks to evaluate against")

    if args.eval_only:
        checkpoint = load_checkpoint(args.checkpoint or out_dir / "best.pt")
        model = build_deeplab(**checkpoint["model_args"]).to(ctx.device)
        model.load_state_dict(checkpoint["model"])
        model.eval()
        result = evaluate_segmentation(
            model, val_set, cfg.eval_scales, cfg.eval_flip, "deeplab" if cfg.eval_crf else None,
            prediction_dir=out_dir / "predictions", shard=(ctx.rank, ctx.world_size), progress=ctx.is_main,
        )
        print(format_iou_table(result, val_set.class_names))
        if ctx.is_main:
            save_json(out_dir / "eval_metrics.json", {**result, "protocol": protocol(cfg), "checkpoint": str(args.checkpoint or out_dir / "best.pt")})
        return 0

    last_path = out_dir / "last.pt"
    resume_state = None
    if last_path.is_file() and not args.overwrite:
        resume_state = load_checkpoint(last_path)
        if resume_state["iteration"] >= cfg.iterations:
            log.info("%s is finished (%d iterations); --overwrite retrains", last_path, cfg.iterations)
            return 0
        if not args.resume:
            log.error("%s holds an unfinished run: pass --resume to continue or --overwrite", last_path)
            return 2

    transform = train_transform(cfg.crop_size, scale_range=cfg.scale_range, color_jitter=cfg.color_jitter)
    if cfg.labels == "pseudo":
        base = build_dataset(data.name, data.root, data.train_split, **data.options)
        train_set = WithPseudoLabels(base, work_dir / "labels", transform)
    elif cfg.labels == "gt":
        train_set = build_dataset(data.name, data.root, data.train_split, transform=transform, **data.options)
        if not train_set.has_masks:
            raise ValueError(f"seg.labels=gt but split {data.train_split!r} has no masks; use seg.labels=pseudo")
    else:
        raise ValueError(f"seg.labels must be 'pseudo' or 'gt', got {cfg.labels!r}")

    model_args = deeplab_args(cfg, train_set.num_classes)
    seed_everything(config.seed)  # the random initialisation follows the config's seed
    raw_model = build_deeplab(**model_args).to(ctx.device)
    model: nn.Module = raw_model
    if ctx.distributed:
        if cfg.sync_bn and not cfg.freeze_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    optimizer = torch.optim.SGD(deeplab_param_groups(raw_model, cfg.lr), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=cfg.iterations, power=0.9)
    use_amp = cfg.amp and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=use_amp)

    iteration, best_miou, history = 0, -1.0, []
    if resume_state is not None:
        if resume_state["scheduler"]["total_iters"] != cfg.iterations:
            log.error("%s was trained with a schedule of %d iterations, this config gives %d: resume with the "
                      "same seg.iterations or pass --overwrite", last_path, resume_state["scheduler"]["total_iters"],
                      cfg.iterations)
            return 2
        restore_training_state(resume_state, unwrap(model), optimizer, scheduler, scaler)
        iteration, best_miou, history = resume_state["iteration"], resume_state["best_miou"], resume_state["history"]
        log.info("resumed from %s at iteration %d", last_path, iteration)

    if ctx.is_main:
        save_config(config, out_dir / "config.yaml")
    writer = tensorboard_writer(out_dir / "tb", ctx.is_main)
    log.info("%d training images (%s labels), %d iterations, batch %d x %d, device %s",
             len(train_set), cfg.labels, cfg.iterations, cfg.batch_size, ctx.world_size, ctx.device)
    stream = batches(train_set, cfg, data.num_workers, config.seed, ctx, iteration)
    progress = tqdm(total=cfg.iterations, initial=iteration, disable=not ctx.is_main, desc="train_seg")
    model.train()
    start, loss_sum, done_since = time.perf_counter(), 0.0, 0
    while iteration < cfg.iterations:
        batch = next(stream)
        images = batch["image"].to(ctx.device, non_blocking=True)
        masks = batch["mask"].to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, enabled=use_amp):
            loss = segmentation_loss(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        iteration += 1
        loss_sum, done_since = loss_sum + loss.item(), done_since + 1
        progress.update()
        if writer is not None and iteration % cfg.log_interval == 0:
            writer.add_scalar("seg/loss", loss.item(), iteration)
            writer.add_scalar("seg/lr", optimizer.param_groups[0]["lr"], iteration)

        if iteration % cfg.val_interval == 0 or iteration == cfg.iterations:
            record = {
                "iteration": iteration, "train_loss": loss_sum / done_since,
                "s_per_iter": (time.perf_counter() - start) / done_since, "peak_memory_mb": peak_memory_mb(ctx.device),
            }
            if val_set is not None:
                model.eval()
                result = evaluate_segmentation(
                    unwrap(model), val_set, cfg.eval_scales, cfg.eval_flip, "deeplab" if cfg.eval_crf else None,
                    shard=(ctx.rank, ctx.world_size), progress=False,
                )
                model.train()
                record.update(val_miou=result["miou"], val_iou=result["iou_by_name"])
                if writer is not None:
                    writer.add_scalar("seg/val_miou", result["miou"], iteration)
                    log_predictions(writer, unwrap(model), val_set, iteration)
            history.append(record)
            log.info("iteration %d: loss %.4f, %.3f s/iter%s", iteration, record["train_loss"], record["s_per_iter"],
                     f", val mIoU {record['val_miou']:.2f}" if "val_miou" in record else "")
            if ctx.is_main:
                improved = "val_miou" not in record or record["val_miou"] >= best_miou
                best_miou = max(best_miou, record.get("val_miou", best_miou))
                state = {
                    "model": unwrap(model).state_dict(), "model_args": {**model_args, "pretrained": "none"},
                    "class_names": train_set.class_names, "palette": train_set.palette, "iteration": iteration,
                    "best_miou": best_miou, "history": history, "config": config_to_dict(config),
                }
                save_training_state(out_dir, state, improved, optimizer, scheduler, scaler)
                best = max(history, key=lambda r: r.get("val_miou", -1))
                save_json(out_dir / "metrics.json", {
                    "labels": cfg.labels, "iterations_done": iteration, "iterations": cfg.iterations,
                    "best_val_miou": best.get("val_miou"), "iou_by_class": best.get("val_iou"),
                    "protocol": protocol(cfg), "history": history,
                })
            start, loss_sum, done_since = time.perf_counter(), 0.0, 0
    progress.close()
    if writer is not None:
        writer.close()
    cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
