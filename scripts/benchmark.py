"""Speed and memory of the pipeline's hot paths for one config, on this machine.

    python scripts/benchmark.py [--config rca/configs/demo.yaml] [--set ...] [--iters 10] [--device cpu]

Prints (and with ``--json FILE`` writes) seconds per training iteration of the RCA classifier and of
DeepLab-v2 at the config's batch and crop size, multi-scale CAM inference in images/s, dense-CRF
pseudo labels in images/s, and peak memory (RSS on the CPU, allocator peak on a GPU). Random
weights and the config's dataset are used; no outputs of the stages are needed.

``--contrast`` adds the DeepLab-v2 step with cross-entropy alone and with each contrastive loss of
``rca.losses.CONTRAST_LOSSES`` (``seg.contrast`` settings, memories filled), in the same process,
and each one's time as a ratio to cross-entropy alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from rca.cli import make_parser, parse_command_line
from rca.config import add_config_args, config_from_args


def parse_args(argv=None) -> argparse.Namespace:
    parser = add_config_args(make_parser(__doc__))
    parser.add_argument("--iters", type=int, default=10, help="timed repetitions of each measurement")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--contrast", action="store_true", help="also time the DeepLab step with each contrastive loss")
    return parse_command_line(parser, argv)


if __name__ == "__main__":
    parse_args()  # --help, --print-config and argument errors answer here, before the heavy imports below (rca/cli.py)

import torch

from rca.cam import multiscale_cam, normalize_cams
from rca.data import build_dataset
from rca.data.transforms import eval_transform
from rca.engine.logs import peak_memory_mb
from rca.errors import run_cli
from rca.io import save_json
from rca.losses import CONTRAST_LOSSES, build_contrast
from rca.memory import RegionalMemory
from rca.models.classifier import build_classifier, classifier_args, rca_classification_loss
from rca.models.deeplab import build_deeplab, deeplab_args
from rca.pseudo_labels import make_pseudo_label
from rca.segment import segmentation_loss


def timed(function, repeats: int) -> float:
    """Mean seconds per call of ``function`` after one warm-up call."""
    function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def contrast_step_times(seg, num_classes: int, num_train_images: int, device: torch.device, iters: int) -> dict:
    """Seconds per DeepLab-v2 training step (forward, backward, SGD) with cross-entropy alone and
    with each contrastive loss, and the ratio of each to cross-entropy alone.

    Labels are piecewise constant (random classes on a 32-pixel grid), so the samplers see regions
    as in real masks; every memory is filled before timing (its full-size cost). Contextrast is
    skipped (``None``) for backbones without stages.
    """
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(seg.batch_size, 3, seg.crop_size, seg.crop_size, generator=generator).to(device)
    cells = -(-seg.crop_size // 32)
    masks = torch.randint(0, num_classes, (seg.batch_size, cells, cells), generator=generator)
    masks = masks.repeat_interleave(32, 1).repeat_interleave(32, 2)[:, :seg.crop_size, :seg.crop_size].to(device)
    times = {}
    for name in ("ce",) + CONTRAST_LOSSES:
        torch.manual_seed(0)
        model = build_deeplab(**{**deeplab_args(seg, num_classes), "pretrained": "none"}).to(device)
        cfg = dataclasses.replace(seg.contrast, losses=[] if name == "ce" else [name], warmup_iters=0)
        try:
            contrast = build_contrast(cfg, num_classes, model.backbone, num_train_images).to(device)
        except NotImplementedError:
            times[name] = None
            continue
        for memory in (m for m in contrast.modules() if isinstance(m, RegionalMemory)):
            labels = torch.arange(memory.num_classes, device=device).repeat_interleave(memory.size)
            memory.push(torch.randn(len(labels), memory.dim, device=device), labels)
        optimizer = torch.optim.SGD([*model.parameters(), *contrast.parameters()], lr=1e-3, momentum=0.9)

        def step():
            outputs = model(images, return_stages=contrast.needs_stages)
            loss = segmentation_loss(outputs, masks) + sum(contrast(outputs, masks, 0).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        times[name] = timed(step, iters)
    results = {f"seg_s_per_iter_{name}": t for name, t in times.items()}
    results.update({f"seg_ratio_{name}": t / times["ce"] for name, t in times.items() if t and name != "ce"})
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    config, _ = config_from_args(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = config.data
    dataset = build_dataset(data.name, data.root, data.label_split, **data.options)
    num_tags = dataset.label_space.num_tags
    results = {"config": config.name, "device": str(device), "threads": torch.get_num_threads()}

    cls = config.cls
    model = build_classifier(**{**classifier_args(cls, num_tags), "pretrained": "none"}).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(cls.batch_size, 3, cls.crop_size, cls.crop_size, device=device)
    tags = (torch.rand(cls.batch_size, num_tags, device=device) < 0.3).float()

    def cls_step():
        loss = rca_classification_loss(model(images, tags), tags, cls.coarse_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    results["cls_s_per_iter"] = timed(cls_step, args.iters)
    model.eval()
    item = dataset[0]
    image = eval_transform()(item)["image"]
    cam_time = timed(lambda: multiscale_cam(model, image, config.labels.scales, config.labels.flip), args.iters)
    results["cam_images_per_s"] = 1 / cam_time
    cams, tagged = normalize_cams(multiscale_cam(model, image, config.labels.scales), torch.ones(num_tags))
    cams, classes = cams[:3].cpu().numpy(), dataset.label_space.tag_to_label(tagged[:3].numpy())
    rule, params = ("constant", {"threshold": 0.2}) if dataset.has_background else ("argmax", {})
    crf_time = timed(lambda: make_pseudo_label(cams, classes, rule, image=item["image"], crf="psa", **params), args.iters)
    results["crf_images_per_s_3_classes"] = 1 / crf_time

    seg = config.seg
    deeplab = build_deeplab(**{**deeplab_args(seg, dataset.num_classes), "pretrained": "none"}).to(device)
    optimizer = torch.optim.SGD(deeplab.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(seg.batch_size, 3, seg.crop_size, seg.crop_size, device=device)
    masks = torch.randint(0, dataset.num_classes, (seg.batch_size, seg.crop_size, seg.crop_size), device=device)

    def seg_step():
        loss = segmentation_loss(deeplab(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    results["seg_s_per_iter"] = timed(seg_step, args.iters)
    if args.contrast:
        results.update(contrast_step_times(seg, dataset.num_classes, len(dataset), device, args.iters))
    results["peak_memory_mb"] = peak_memory_mb(device)
    for key, value in results.items():
        print(f"{key:28} {value:.4g}" if isinstance(value, float) else f"{key:28} {value}")
    if args.json:
        save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
