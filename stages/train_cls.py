"""Stage 1: train the multi-label CAM classifier with RCA from image-level tags only.

    python stages/train_cls.py --config rca/configs/<exp>.yaml [--set key=value ...]
                               [--work-dir DIR] [--resume] [--overwrite]
    torchrun --nproc_per_node=4 stages/train_cls.py --config rca/configs/voc12.yaml

Writes ``DIR/cls/{last.pt,best.pt,metrics.json,config.yaml,train.log}`` and TensorBoard logs in
``DIR/cls/tb``. Per epoch (Zhou et al., CVPR 2022, arXiv:2203.09653, Sec. 3):

1. at the start of the epoch, k-means over the memory bank as it stands gives the class centres
   that semantic aggregation attends to during the epoch (as the released code does; the first
   epoch, with an empty bank, has none);
2. per iteration the classifier gives fine/coarse class scores and one embedding per (image,
   tagged class) region; loss = MultiLabelSoftMargin(fine) + coarse_weight x MultiLabelSoftMargin(coarse)
   + contrast_weight x semantic contrast of the regions against the memory bank (from epoch
   ``contrast_warmup_epochs`` on);
3. regions whose class probability exceeds ``write_threshold`` are pushed into the memory bank
   (all-gathered under DDP so every rank holds the same bank).

``method: cam`` trains the plain CAM classifier with the same loop. Validation (when the config
names a val split) is tag-prediction mAP over classes, in percent; ``best.pt`` keeps the epoch with
the best val mAP. The saved centres are the ones the epoch trained with. ``--resume`` continues from
``last.pt`` exactly: every epoch's randomness is derived from (seed, epoch, rank). A NaN or infinite
loss stops the run naming the term and the iteration, before anything of that epoch is saved;
``--skip-bad`` lists unreadable training images in ``DIR/cls/skipped.txt`` and trains on
(:mod:`rca.data.skip`). A ``DIR/cls``
made with other settings is refused, naming the changed keys (``fingerprint.json``,
:mod:`rca.engine.fingerprint`). The per-epoch record also holds the mean
:func:`rca.models.classifier.attention_statistics` of the epoch's steps (once there are centres).
"""

from __future__ import annotations

import argparse
import sys
import time

from rca.cli import make_parser, parse_command_line
from rca.config import add_config_args, config_from_args, config_to_dict
from rca.errors import run_cli


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    add_config_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue from DIR/cls/last.pt")
    parser.add_argument("--overwrite", action="store_true", help="retrain even if DIR/cls is finished")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="list unreadable training images in DIR/cls/skipped.txt and train without them")
    return parse_command_line(parser, argv)


if __name__ == "__main__":
    parse_args()  # --help, --print-config and argument errors answer here, before the heavy imports below (rca/cli.py)

import torch
from torch.utils.data import DataLoader, DistributedSampler

from rca.classify import evaluate_tags, region_contrast_loss
from rca.data import build_dataset
from rca.data.skip import SKIPPED_FILE, SkipBad
from rca.data.transforms import eval_transform, train_transform
from rca.engine.distributed import cleanup_distributed, init_distributed, wrap_ddp
from rca.engine.fingerprint import StaleOutputsError, check_fingerprint
from rca.engine.logs import TrainingProgress, peak_memory_mb, setup_logger
from rca.engine.optim import check_finite, grad_scaler, optimizer_step, poly_scheduler, use_amp
from rca.engine.run import EXIT_REFUSED, TrainingRun, iterations_per_epoch
from rca.engine.seeding import seed_epoch, seed_everything, worker_init_fn
from rca.models.classifier import attention_statistics, build_classifier, classifier_args, rca_classification_loss


def build_optimizer(model, cfg) -> torch.optim.SGD:
    """SGD, the backbone at ``cls.lr`` and every other parameter at ``cls.lr x cls.head_lr_mult``.

    PSA, IRN and EPS build SGD with the default momentum of 0; RCA's configs use momentum 0.9.
    """
    backbone_params = list(model.backbone.parameters())
    backbone_ids = {id(p) for p in backbone_params}
    head_params = [p for p in model.parameters() if id(p) not in backbone_ids]
    return torch.optim.SGD(
        [{"params": backbone_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.lr * cfg.head_lr_mult}],
        lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
    )


def train_one_epoch(model, raw_model, loader, optimizer, scheduler, scaler, epoch: int, cfg, ctx, writer,
                    progress: TrainingProgress) -> dict:
    """One pass over ``loader``, each step counted by ``progress``; returns the epoch's mean losses,
    seconds per iteration and mean :func:`rca.models.classifier.attention_statistics` (over the steps
    that had centres)."""
    iters_per_epoch = len(loader)
    amp = use_amp(cfg.amp, ctx.device)
    use_contrast = cfg.method == "rca" and epoch >= cfg.contrast_warmup_epochs
    sums = {"loss": 0.0, "cls": 0.0, "contrast": 0.0}
    attention_sums, attention_steps = {}, 0
    start = time.perf_counter()
    for step, batch in enumerate(loader):
        images = batch["image"].to(ctx.device, non_blocking=True)
        tags = batch["tags"].to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, enabled=amp):
            outputs = model(images, tags)
            loss_cls = rca_classification_loss(outputs, tags, cfg.coarse_weight)
        loss_con = torch.zeros((), device=ctx.device)
        if use_contrast and len(raw_model.memory.keys()[0]):
            loss_con = region_contrast_loss(outputs, raw_model.memory, cfg)
        loss = loss_cls + cfg.contrast_weight * loss_con
        optimizer_step(loss, optimizer, scheduler, scaler)
        if cfg.method == "rca":
            raw_model.memory.push(*raw_model.memory_candidates(outputs, cfg.write_threshold))

        losses = {"loss": loss.item(), "cls": loss_cls.item(), "contrast": loss_con.item()}
        check_finite(losses, f"epoch {epoch}, iteration {step + 1}/{iters_per_epoch}", "cls.lr")
        for key, value in losses.items():
            sums[key] += value
        progress.step(losses, optimizer.param_groups[0]["lr"])
        if stats := attention_statistics(outputs.get("attention")):
            attention_steps += 1
            for key, value in stats.items():
                attention_sums[key] = attention_sums.get(key, 0.0) + value
        global_step = epoch * iters_per_epoch + step
        if writer is not None and global_step % cfg.log_interval == 0:
            for key, value in losses.items():
                writer.add_scalar("cls/loss" if key == "loss" else f"cls/loss_{key}", value, global_step)
            writer.add_scalar("cls/lr", optimizer.param_groups[0]["lr"], global_step)
    record = {"epoch": epoch, "s_per_iter": (time.perf_counter() - start) / iters_per_epoch,
              "peak_memory_mb": peak_memory_mb(ctx.device)}
    record.update({f"train_{k}": v / iters_per_epoch for k, v in sums.items()})
    record.update({k: v / attention_steps for k, v in attention_sums.items()})
    if cfg.method == "rca":
        filled = raw_model.memory.num_filled
        record["memory_entries"], record["memory_classes"] = int(filled.sum()), int((filled > 0).sum())
    return record


def log_epoch(log, writer, record: dict) -> None:
    """The epoch's log line and its per-epoch TensorBoard scalars (loss, attention statistics, val mAP)."""
    log.info("epoch %d: loss %.4f (cls %.4f, contrast %.4f), %.3f s/iter%s%s%s", record["epoch"], record["train_loss"],
             record["train_cls"], record["train_contrast"], record["s_per_iter"],
             f", memory {record['memory_entries']} entries of {record['memory_classes']} classes"
             if "memory_entries" in record else "",
             f", attention entropy {record['attention_entropy']:.3f} nats ({record['attention_entropy_ratio']:.2f}"
             f" of uniform), max weight {record['attention_max_weight']:.3f} over {record['attention_centres']:.0f}"
             " centres" if "attention_entropy" in record else "",
             f", val mAP {record['val_map']:.2f}" if "val_map" in record else "")
    if writer is not None:
        writer.add_scalar("cls/epoch_loss", record["train_loss"], record["epoch"])
        for key in ("attention_entropy", "attention_entropy_ratio", "attention_max_weight"):
            if key in record:
                writer.add_scalar(f"cls/{key}", record[key], record["epoch"])
        if "val_map" in record:
            writer.add_scalar("cls/val_map", record["val_map"], record["epoch"])


def build_datasets(config):
    """The training split (with the classification augmentation) and the val split (or ``None``)."""
    data, cfg = config.data, config.cls
    transform = train_transform(cfg.crop_size, resize_long=cfg.resize_long, color_jitter=cfg.color_jitter)
    train_set = build_dataset(data.name, data.root, data.train_split, transform=transform, **data.options)
    train_set.require_tags("data.train_split")
    val_set = None
    if data.val_split:
        val_set = build_dataset(data.name, data.root, data.val_split, transform=eval_transform(), **data.options)
        val_set.require_tags("data.val_split")  # scored by tag-prediction mAP
    return train_set, val_set


def main(argv=None) -> int:
    args = parse_args(argv)
    config, work_dir = config_from_args(args)
    cfg, data, out_dir = config.cls, config.data, work_dir / "cls"
    ctx = init_distributed(args.device)
    log = setup_logger("train_cls", out_dir / "train.log", ctx.is_main)
    try:
        check_fingerprint(out_dir, config, "cls", overwrite=args.overwrite, write=ctx.is_main)
    except StaleOutputsError as error:
        log.error("%s", error)
        return EXIT_REFUSED
    run = TrainingRun(out_dir, cfg.epochs, "epochs", "val_map", log)
    if (exit_code := run.check(args.resume, args.overwrite, ctx.is_main)) is not None:
        return exit_code

    train_set, val_set = build_datasets(config)
    if args.skip_bad:
        train_set = SkipBad(train_set, out_dir / SKIPPED_FILE)
    space = train_set.label_space
    iters_per_epoch = iterations_per_epoch(len(train_set), cfg.batch_size, ctx.world_size, data.train_split,
                                           "cls.batch_size")
    model_args = classifier_args(cfg, space.num_tags)
    seed_everything(config.seed)  # the random initialisation follows the config's seed
    raw_model = build_classifier(**model_args).to(ctx.device)
    # Before the first k-means there is no aggregation context, so the embedding head gets no
    # gradient from the classification loss: RCA needs find_unused_parameters.
    model = wrap_ddp(raw_model, ctx, find_unused_parameters=cfg.method == "rca")
    optimizer = build_optimizer(raw_model, cfg)
    scheduler = poly_scheduler(optimizer, cfg.epochs * iters_per_epoch)
    scaler = grad_scaler(cfg.amp, ctx.device)
    if not run.restore(raw_model, optimizer, scheduler, scaler, "cls.epochs or cls.batch_size"):
        return EXIT_REFUSED

    writer = run.open_outputs(config, ctx.is_main)
    sampler = DistributedSampler(train_set, ctx.world_size, ctx.rank, shuffle=True, seed=config.seed, drop_last=True)
    log.info("%d training images, %d iterations/epoch, %d epochs, method %s, device %s x %d",
             len(train_set), iters_per_epoch, cfg.epochs, cfg.method, ctx.device, ctx.world_size)
    with TrainingProgress(log, cfg.epochs * iters_per_epoch, run.done * iters_per_epoch, cfg.log_interval,
                          ctx.device, "train_cls", ctx.is_main) as progress:
        for epoch in range(run.done, cfg.epochs):
            if cfg.method == "rca":
                raw_model.update_centres()  # from the bank as it stands; the epoch trains with these centres
            sampler.set_epoch(epoch)
            loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=data.num_workers,
                                drop_last=True, worker_init_fn=worker_init_fn, pin_memory=ctx.device.type == "cuda",
                                generator=seed_epoch(config.seed, epoch, ctx.rank))
            record = train_one_epoch(model, raw_model, loader, optimizer, scheduler, scaler, epoch, cfg, ctx, writer,
                                     progress)
            if val_set is not None and ctx.is_main:
                tag_scores = evaluate_tags(raw_model, val_set, ctx.device, data.num_workers)
                record.update(val_map=tag_scores["map"], val_ap=dict(zip(space.tag_names, tag_scores["ap"])))
            improved = run.add(record, done=epoch + 1)
            log_epoch(log, writer, record)
            if ctx.is_main:
                save_run(run, raw_model, model_args, space, config, improved, optimizer, scheduler, scaler,
                         has_val=val_set is not None)
    if writer is not None:
        writer.close()
    cleanup_distributed()
    return 0


def save_run(run: TrainingRun, model, model_args: dict, space, config, improved: bool, optimizer, scheduler,
             scaler, has_val: bool) -> None:
    """``metrics.json``, ``best.pt`` and ``last.pt`` (everything gen_labels needs to rebuild the model)."""
    state = {"kind": "classifier", "model": model.state_dict(), "model_args": {**model_args, "pretrained": "none"},
             "class_names": space.tag_names, "has_background": space.has_background, "epoch": run.done - 1,
             "config": config_to_dict(config)}
    metrics = {
        "method": config.cls.method, "epochs_done": run.done, "epochs": config.cls.epochs,
        "best_val_map": run.best_score if has_val else None, "val_ap_by_class": run.best_record().get("val_ap"),
        "history": run.history,
    }
    run.save(state, improved, optimizer, scheduler, scaler, metrics)


if __name__ == "__main__":
    sys.exit(run_cli(main))
