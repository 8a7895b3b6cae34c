"""Small fixtures shared by several test files: a colour-edge image with a blurred score, a writer
of datasets in the PASCAL VOC layout, and a two-process gloo launcher for the distributed code paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

EDGE = 20  # true object boundary of edge_image: columns >= EDGE are the object


def edge_image(size: int = 40, seed: int = 0) -> np.ndarray:
    """``(size, size, 3)`` uint8: dark (40) left of column EDGE, bright (200) from it on, noise +-10."""
    rng = np.random.default_rng(seed)
    image = np.where(np.arange(size) >= EDGE, 200, 40)[None, :, None].repeat(size, 0).repeat(3, 2)
    return np.clip(image + rng.integers(-10, 11, image.shape), 0, 255).astype(np.uint8)


def blurred_edge(centre: float, size: int = 40, width: float = 3.0) -> np.ndarray:
    """``(size, size)`` float32 score rising left to right, ``sigmoid((column - centre) / width)``:
    a blurred object score whose 50% boundary is at ``centre`` rather than at the true edge."""
    columns = np.arange(size, dtype=np.float32)
    return (1 / (1 + np.exp(-(columns - centre) / width)))[None].repeat(size, 0).astype(np.float32)


def write_voc(root: Path, splits: dict, images_only: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Write datasets as a VOC2012 folder: ``root/JPEGImages/<id>.jpg`` (JPEG quality 95),
    ``root/SegmentationClassAug/<id>.png`` (except for the splits in ``images_only``, like VOC's
    ``test``) and one ``root/ImageSets/Segmentation/<split>.txt`` list per entry of ``splits``
    (``{split: dataset}``, datasets without a transform). Ids are ``<split>_<item id>`` (the
    synthetic splits reuse ids); returns them, ``{split: ids}``."""
    lists = root / "ImageSets" / "Segmentation"
    for folder in (root / "JPEGImages", root / "SegmentationClassAug", lists):
        folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, dataset in splits.items():
        written[split] = [f"{split}_{name}" for name in dataset.ids]
        for index, name in enumerate(written[split]):
            item = dataset[index]
            Image.fromarray(item["image"]).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
            if split not in images_only:
                Image.fromarray(item["mask"].astype(np.uint8)).save(root / "SegmentationClassAug" / f"{name}.png")
        (lists / f"{split}.txt").write_text("\n".join(written[split]) + "\n")
    return written


def _init_and_run(rank: int, world_size: int, init_file: str, worker, args: tuple) -> None:
    # A forked child inherits the parent's OpenMP pool as a dead copy: an op that parallelises over it
    # waits forever (seen: a conv forward hung in futex_wait while other jobs loaded the CPU). One
    # intra-op thread per rank never enters the pool.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        worker(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def spawn_gloo(worker, world_size: int, tmp_path: Path, *args) -> None:
    """Run ``worker(rank, world_size, *args)`` in ``world_size`` CPU processes joined by one gloo
    process group (file rendezvous in ``tmp_path``); raises if any process fails.

    The processes are forked where the platform can (no re-import of torch: well under a second
    instead of seconds per process), spawned elsewhere; ``worker`` must then be a module-level
    function. It reports back by writing files.
    """
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_init_and_run, args=(world_size, str(tmp_path / "gloo_init"), worker, args),
                       nprocs=world_size, join=True, start_method=start_method)
