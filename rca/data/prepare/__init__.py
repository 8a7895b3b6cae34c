"""Turn official dataset downloads into what the readers of :mod:`rca.data` read.

One module per dataset whose official format is not read directly: :mod:`.voc` (SBD ``.mat`` ->
``SegmentationClassAug``, the ``train_aug`` list, image-level labels from the XML annotations),
:mod:`.coco` (81-class label PNGs and image-level labels from ``instances_*.json``) and
:mod:`.pascal_context` (459-class ``.mat`` -> 60-class PNGs and the split lists). The scripts
``scripts/prepare_*.py`` are thin command lines over them. Every output is written atomically and
finished outputs are kept unless ``overwrite`` is set, so an interrupted run resumes.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rca.io import atomic_open, save_label_png


def _convert_one(job: tuple[Callable[[Any], np.ndarray], Path, Any, np.ndarray]) -> None:
    convert, out_path, source, palette = job
    save_label_png(out_path, convert(source), palette)


def write_label_pngs(
    convert: Callable[[Any], np.ndarray],
    jobs: Sequence[tuple[Path, Any]],
    palette: np.ndarray,
    *,
    overwrite: bool = False,
    workers: int = 1,
    desc: str = "labels",
) -> int:
    """Write ``convert(source)`` as a palette PNG to each ``out_path`` of ``jobs``.

    Args:
        convert: picklable function ``source -> (H, W)`` integer label map (0..255).
        jobs: ``(out_path, source)`` pairs.
        palette: ``(256, 3)`` uint8 colour table of the PNGs.
        overwrite: rewrite PNGs that exist already (else they are kept).
        workers: processes to use (1: this one).
        desc: progress bar label.

    Returns:
        The number of PNGs written.
    """
    todo = [(convert, Path(out), source, palette) for out, source in jobs if overwrite or not Path(out).exists()]
    if workers > 1 and len(todo) > 1:
        with multiprocessing.Pool(workers) as pool:
            for _ in tqdm(pool.imap_unordered(_convert_one, todo, chunksize=16), total=len(todo), desc=desc):
                pass
    else:
        for job in tqdm(todo, desc=desc, disable=len(todo) < 100):
            _convert_one(job)
    return len(todo)


def write_id_list(path: str | Path, ids: Sequence[str]) -> None:
    """Write one id per line (atomically)."""
    with atomic_open(path, "w") as f:
        f.write("".join(f"{image_id}\n" for image_id in ids))
