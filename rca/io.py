"""Atomic file writes and the image/array formats the pipeline stores on disk.

Every output of every stage goes through these helpers, so a stage killed half-way never leaves a
truncated file behind: data is written to a temporary file in the destination folder and moved into
place with ``os.replace`` (atomic on POSIX and Windows within one file system). Reading a file the
user supplied goes through :func:`reading`, so a missing, corrupt or truncated file is reported
with its path (:class:`rca.errors.BadItemError`), never as a bare decoder error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from rca.errors import BadItemError

SKIP_HINT = "replace the file or leave the image out of the split (--skip-bad skips such images)"
"""What to do about an unreadable image or mask of a dataset (:func:`reading`'s default ``fix``)."""


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str, fix: str = SKIP_HINT) -> Iterator[None]:
    """Context in which any failure to read ``path`` becomes a :class:`rca.errors.BadItemError`.

    Args:
        path: the file being read.
        what: what the file is, for the message (``"image"``, ``"mask"``, ``"CAM file"``).
        fix: what the user should do, appended to the message.

    Raises:
        BadItemError: ``cannot read <what> <path>: <reason>; <fix>`` (the decoder's error chained),
            for a missing file too.
    """
    try:
        yield
    except BadItemError:
        raise
    except Exception as error:  # any decoder failure (PIL: OSError, SyntaxError, ValueError, zlib.error ...)
        if isinstance(error, FileNotFoundError):
            reason = "no such file"
        elif isinstance(error, UnidentifiedImageError):
            reason = "not an image file PIL can decode"
        else:
            reason = str(error) or type(error).__name__
        raise BadItemError(f"cannot read {what} {path}: {reason}; {fix}") from error


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on a clean exit move it to ``path`` atomically.

    Parent folders are created. On an exception the temporary file is deleted and ``path`` is left
    as it was (absent or with its previous content).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_partial_writes(*folders: str | os.PathLike, log: logging.Logger | None = None) -> list[Path]:
    """Delete the temporary files a killed :func:`atomic_open` left in ``folders`` (not recursive).

    A process killed in the middle of a write leaves its partial bytes as ``.<name>.<random>.tmp``
    next to the file it was writing (which is intact). The stages call this for their output folders
    before they write, when no other process writes there (not for ``gen_labels --shard``: a
    concurrent shard's write in progress looks the same).

    Args:
        folders: folders to clean; missing ones are skipped.
        log: if given, each deleted path is logged (info).

    Returns:
        The deleted paths.
    """
    partial = [p for folder in map(Path, folders) if folder.is_dir() for p in folder.iterdir()
               if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()]
    for path in partial:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if log is not None:
            log.info("deleted %s, the partial file of an interrupted write", path)
    return partial


def save_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON (NaN written as ``NaN``) atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def save_npy(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write named arrays as one ``.npy`` file holding a pickled dict (load with :func:`load_npy`).

    The format of PSA/IRN's ``cls_labels.npy``; the pipeline's own arrays use :func:`save_npz`.
    """
    with atomic_open(path, "wb") as f:
        np.save(f, dict(arrays), allow_pickle=True)


def load_npy(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a dict written by :func:`save_npy` (unpickles: read only files you trust)."""
    return np.load(path, allow_pickle=True).item()


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write named arrays as an uncompressed ``.npz`` file (no pickle; load with :func:`load_npz`)."""
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the arrays of a ``.npz`` file as ``{name: array}``, refusing pickled objects.

    Raises:
        BadItemError: the file is missing, corrupt or holds pickled objects (names the file).
    """
    with reading(path, "array file", fix="delete it; the stage that wrote it writes it again"):
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}


def save_label_png(path: str | os.PathLike, label: np.ndarray, palette: np.ndarray) -> None:
    """Write an ``(H, W)`` integer label map (values 0..255, 255 = ignore) as a palette PNG.

    Args:
        label: ``(H, W)`` integer array with values in [0, 255].
        palette: ``(256, 3)`` uint8 colour table (see :func:`rca.data.palette.make_palette`).

    Raises:
        ValueError: if ``label`` is not 2-D or has values outside [0, 255].
    """
    if label.ndim != 2:
        raise ValueError(f"label map for {path} must be (H, W), got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label map for {path} has values outside [0, 255]")
    image = Image.fromarray(label.astype(np.uint8))  # mode "L"; putpalette turns it into "P"
    image.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG")


def save_rgb_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` uint8 RGB image as PNG atomically."""
    with atomic_open(path, "wb") as f:
        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(f, format="PNG")


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG (palette or greyscale) as an ``(H, W)`` int64 array of its raw indices.

    Raises:
        BadItemError: the file is missing, unreadable, or not a palette or greyscale image (names it).
    """
    with reading(path, "label image"), Image.open(path) as image:
        if image.mode not in ("P", "L", "I", "I;16"):
            raise BadItemError(f"{path}: a label PNG must be palette or greyscale, got mode {image.mode}; "
                               f"{SKIP_HINT}")
        return np.asarray(image).astype(np.int64)
