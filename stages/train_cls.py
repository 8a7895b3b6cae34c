"""Stage 1: train the multi-label CAM classifier with RCA from image-level tags only.

    python stages/train_cls.py --config rca/configs/<exp>.yaml [--set key=value ...]
                               [--work-dir DIR] [--resume] [--overwrite]
    torchrun --nproc_per_node=4 stages/train_cls.py --config rca/configs/voc12.yaml

Writes ``DIR/cls/{last.pt,best.pt,metrics.json,config.yaml,train.log}`` and TensorBoard logs in
``DIR/cls/tb``. Per iteration (Zhou et al., CVPR 2022, Sec. 3):

1. the classifier gives fine/coarse class scores and one embedding per (image, tagged class) region;
2. loss = MultiLabelSoftMargin(fine) + coarse_weight x MultiLabelSoftMargin(coarse)
          + contrast_weight x semantic contrast of the regions against the memory bank
   (the contrast term from epoch ``contrast_warmup_epochs`` on);
3. regions whose class probability exceeds ``write_threshold`` are pushed into the memory bank
   (all-gathered under DDP so every rank holds the same bank);
4. at the end of each epoch, k-means over the memory refreshes the class centres that semantic
   aggregation attends to.

``method: cam`` trains the plain CAM classifier with the same loop. Validation (when the config
names a val split) is tag-prediction mAP over classes, in percent; ``best.pt`` keeps the epoch with
the best val mAP. ``--resume`` continues from ``last.pt`` exactly: every epoch's randomness is derived
from (seed, epoch, rank).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from rca.config import add_config_args, config_from_args, config_to_dict, save_config
from rca.data import build_dataset
from rca.data.transforms import eval_transform, train_transform
from rca.engine.checkpoint import load_checkpoint, restore_training_state, save_training_state
from rca.engine.distributed import cleanup_distributed, init_distributed
from rca.engine.logs import peak_memory_mb, setup_logger, tensorboard_writer
from rca.engine.seeding import seed_epoch, seed_everything, worker_init_fn
from rca.io import save_json
from rca.losses import mixed_semantic_contrast_loss, semantic_contrast_loss
from rca.metrics import average_precision
from rca.models.classifier import build_classifier, classifier_args, rca_classification_loss


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue from DIR/cls/last.pt")
    parser.add_argument("--overwrite", action="store_true", help="retrain even if DIR/cls is finished")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return parser.parse_args(argv)


def contrast_loss(outputs: dict, memory, cfg) -> torch.Tensor:
    """RCA semantic contrast of this batch's regions against the memory bank (optionally mixed up)."""
    loss = mixed_semantic_contrast_loss if cfg.region_mixup else semantic_contrast_loss
    return loss(outputs["region_embeddings"].float(), outputs["region_labels"], *memory.keys(), cfg.temperature)


@torch.inference_mode()
def evaluate_tags(model, dataset, device, num_workers: int = 0) -> dict:
    """Tag-prediction mAP (percent) and per-class AP on a split, one full-size image at a time."""
    model.eval()
    scores, targets = [], []
    for item in DataLoader(dataset, batch_size=1, num_workers=num_workers):
        scores.append(torch.sigmoid(model(item["image"].to(device))["scores"].float()).cpu())
        targets.append(item["tags"])
    model.train()
    scores, targets = torch.cat(scores), torch.cat(targets)
    per_class = [average_precision(scores[:, [k]], targets[:, [k]]) for k in range(scores.shape[1])]
    return {"map": average_precision(scores, targets), "ap": per_class}


def main(argv=None) -> int:
    args = parse_args(argv)
    config, work_dir = config_from_args(args)
    cfg, out_dir = config.cls, work_dir / "cls"
    ctx = init_distributed(args.device)
    log = setup_logger("train_cls", out_dir / "train.log", ctx.is_main)

    last_path = out_dir / "last.pt"
    resume_state = None
    if last_path.is_file() and not args.overwrite:
        resume_state = load_checkpoint(last_path)
        if resume_state["epoch"] + 1 >= cfg.epochs:
            log.info("%s is finished (%d epochs); --overwrite retrains", last_path, cfg.epochs)
            return 0
        if not args.resume:
            log.error("%s holds an unfinished run: pass --resume to continue or --overwrite", last_path)
            return 2

    data = config.data
    crop = cfg.crop_size
    train_set = build_dataset(
        data.name, data.root, data.train_split,
        transform=train_transform(crop, resize_long=cfg.resize_long, color_jitter=cfg.color_jitter),
        **data.options,
    )
    val_set = None
    if data.val_split:
        val_set = build_dataset(data.name, data.root, data.val_split, transform=eval_transform(), **data.options)
    num_tags = train_set.num_classes - int(train_set.has_background)
    class_names = train_set.class_names[int(train_set.has_background):]

    model_args = classifier_args(cfg, num_tags)
    seed_everything(config.seed)  # the random initialisation follows the config's seed
    raw_model = build_classifier(**model_args).to(ctx.device)
    model = raw_model
    if ctx.distributed:
        # Before the first k-means there is no aggregation context, so the embedding head gets no
        # gradient from the classification loss: RCA needs find_unused_parameters.
        model = DistributedDataParallel(
            raw_model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
            find_unused_parameters=cfg.method == "rca",
        )

    backbone_params = list(raw_model.backbone.parameters())
    backbone_ids = {id(p) for p in backbone_params}
    head_params = [p for p in raw_model.parameters() if id(p) not in backbone_ids]
    # PSA, IRN and EPS build SGD with the default momentum of 0; RCA's configs use momentum 0.9.
    optimizer = torch.optim.SGD(
        [{"params": backbone_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.lr * cfg.head_lr_mult}],
        lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
    )
    iters_per_epoch = len(train_set) // (cfg.batch_size * ctx.world_size)
    if iters_per_epoch == 0:
        raise ValueError(
            f"cls.batch_size={cfg.batch_size} x {ctx.world_size} process(es) exceeds the "
            f"{len(train_set)} images of split {data.train_split!r}: lower cls.batch_size"
        )
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=cfg.epochs * iters_per_epoch, power=0.9)
    use_amp = cfg.amp and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=use_amp)

    start_epoch, best_map, history = 0, -1.0, []
    if resume_state is not None:
        if resume_state["scheduler"]["total_iters"] != scheduler.total_iters:
            log.error("%s was trained with a schedule of %d iterations, this config gives %d (cls.epochs or "
                      "cls.batch_size changed): resume with the same values or pass --overwrite", last_path,
                      resume_state["scheduler"]["total_iters"], scheduler.total_iters)
            return 2
        restore_training_state(resume_state, raw_model, optimizer, scheduler, scaler)
        start_epoch, best_map, history = resume_state["epoch"] + 1, resume_state["best_map"], resume_state["history"]
        log.info("resumed from %s at epoch %d", last_path, start_epoch)

    if ctx.is_main:
        save_config(config, out_dir / "config.yaml")
    writer = tensorboard_writer(out_dir / "tb", ctx.is_main)
    sampler = DistributedSampler(train_set, ctx.world_size, ctx.rank, shuffle=True, seed=config.seed, drop_last=True)
    log.info("%d training images, %d iterations/epoch, %d epochs, method %s, device %s x %d",
             len(train_set), iters_per_epoch, cfg.epochs, cfg.method, ctx.device, ctx.world_size)
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        loader = DataLoader(
            train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=data.num_workers,
            drop_last=True, worker_init_fn=worker_init_fn, generator=seed_epoch(config.seed, epoch, ctx.rank),
            pin_memory=ctx.device.type == "cuda",
        )
        use_contrast = cfg.method == "rca" and epoch >= cfg.contrast_warmup_epochs
        sums = {"loss": 0.0, "cls": 0.0, "contrast": 0.0}
        start = time.perf_counter()
        for step, batch in enumerate(tqdm(loader, desc=f"epoch {epoch}", disable=not ctx.is_main, leave=False)):
            images = batch["image"].to(ctx.device, non_blocking=True)
            tags = batch["tags"].to(ctx.device, non_blocking=True)
            with torch.autocast(ctx.device.type, enabled=use_amp):
                outputs = model(images, tags)
                loss_cls = rca_classification_loss(outputs, tags, cfg.coarse_weight)
            loss_con = torch.zeros((), device=ctx.device)
            if use_contrast and len(raw_model.memory.keys()[0]):
                loss_con = contrast_loss(outputs, raw_model.memory, cfg)
            loss = loss_cls + cfg.contrast_weight * loss_con
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if cfg.method == "rca":
                raw_model.memory.push(*raw_model.memory_candidates(outputs, cfg.write_threshold))

            sums["loss"] += loss.item()
            sums["cls"] += loss_cls.item()
            sums["contrast"] += loss_con.item()
            global_step = epoch * iters_per_epoch + step
            if writer is not None and global_step % cfg.log_interval == 0:
                writer.add_scalar("cls/loss", loss.item(), global_step)
                writer.add_scalar("cls/loss_cls", loss_cls.item(), global_step)
                writer.add_scalar("cls/loss_contrast", loss_con.item(), global_step)
                writer.add_scalar("cls/lr", optimizer.param_groups[0]["lr"], global_step)
        seconds_per_iter = (time.perf_counter() - start) / iters_per_epoch

        if cfg.method == "rca":
            raw_model.update_centres()
        record = {"epoch": epoch, "s_per_iter": seconds_per_iter, "peak_memory_mb": peak_memory_mb(ctx.device)}
        record.update({f"train_{k}": v / iters_per_epoch for k, v in sums.items()})
        if cfg.method == "rca":
            filled = raw_model.memory.num_filled
            record["memory_entries"], record["memory_classes"] = int(filled.sum()), int((filled > 0).sum())
        if val_set is not None and ctx.is_main:
            tag_scores = evaluate_tags(raw_model, val_set, ctx.device, data.num_workers)
            record["val_map"] = tag_scores["map"]
            record["val_ap"] = dict(zip(class_names, tag_scores["ap"]))
        history.append(record)
        log.info("epoch %d: loss %.4f (cls %.4f, contrast %.4f), %.3f s/iter%s%s", epoch, record["train_loss"],
                 record["train_cls"], record["train_contrast"], seconds_per_iter,
                 f", memory {record['memory_entries']} entries of {record['memory_classes']} classes"
                 if "memory_entries" in record else "",
                 f", val mAP {record['val_map']:.2f}" if "val_map" in record else "")
        if writer is not None:
            writer.add_scalar("cls/epoch_loss", record["train_loss"], epoch)
            if "val_map" in record:
                writer.add_scalar("cls/val_map", record["val_map"], epoch)

        if ctx.is_main:
            improved = "val_map" not in record or record["val_map"] >= best_map  # no val: keep the last
            best_map = max(best_map, record.get("val_map", best_map))
            state = {  # everything gen_labels needs to rebuild the model, without pretrained weights
                "model": raw_model.state_dict(), "model_args": {**model_args, "pretrained": "none"},
                "class_names": class_names,
                "has_background": train_set.has_background, "epoch": epoch, "best_map": best_map,
                "history": history, "config": config_to_dict(config),
            }
            save_training_state(out_dir, state, improved, optimizer, scheduler, scaler)
            save_json(out_dir / "metrics.json", {
                "method": cfg.method, "epochs_done": epoch + 1, "epochs": cfg.epochs,
                "best_val_map": best_map if val_set is not None else None,
                "val_ap_by_class": max(history, key=lambda r: r.get("val_map", -1)).get("val_ap"),
                "history": history,
            })
    if writer is not None:
        writer.close()
    cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
