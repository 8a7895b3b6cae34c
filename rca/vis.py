"""Pictures for looking at CAMs, pseudo labels and predictions: overlays and side-by-side panels.

All images are ``(H, W, 3)`` uint8 RGB (OpenCV's colour maps are BGR and converted here); label maps
are ``(H, W)`` integers coloured by a ``(256, 3)`` palette (:mod:`rca.data.palette`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from rca.io import load_label_png, save_rgb_png

_GAP = 4  # pixels of white between panel tiles


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a jet-coloured CAM over an image: ``(1 - alpha) * image + alpha * jet(cam)``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        cam: ``(H, W)`` float in [0, 1] (values outside are clipped); 0 = blue, 1 = red.
        alpha: weight of the heat map, in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ValueError: if the shapes do not match or ``image`` is not uint8 RGB.
    """
    image = np.asarray(image)
    cam = np.asarray(cam, dtype=np.float32)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or cam.shape != image.shape[:2]:
        raise ValueError(f"cam_overlay: need a uint8 (H, W, 3) image and an (H, W) CAM, got {image.dtype} "
                         f"{image.shape} and {cam.shape}")
    heat = cv2.applyColorMap(np.round(np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(np.ascontiguousarray(image), 1 - alpha, heat, alpha, 0)


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner of a copy of ``tile`` (white on a black outline)."""
    tile = np.ascontiguousarray(tile).copy()
    scale = max(0.35, min(tile.shape[:2]) / 400)
    origin = (3, 3 + int(round(14 * scale)))
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(tile, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
    return tile


def make_panel(
    image: np.ndarray,
    cams: np.ndarray,
    class_names: Sequence[str],
    pseudo_label: np.ndarray,
    gt: np.ndarray | None,
    palette: np.ndarray,
) -> np.ndarray:
    """One row of captioned tiles: image | CAM overlay per tagged class | pseudo label | ground truth.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        cams: ``(T, H, W)`` float in [0, 1], one map per tagged class.
        class_names: ``T`` captions for the CAM tiles.
        pseudo_label: ``(H, W)`` integer labels in 0..255 (255 = ignore).
        gt: ``(H, W)`` integer ground truth, or None to leave its tile out.
        palette: ``(256, 3)`` uint8 RGB colour of each label value.

    Returns:
        ``(H, n * W + (n - 1) * 4, 3)`` uint8 RGB with ``n = T + 2`` (``T + 3`` with ``gt``) tiles
        separated by 4-pixel white gaps.

    Raises:
        ValueError: on mismatched shapes or a palette that is not ``(256, 3)``.
    """
    image = np.asarray(image)
    cams = np.asarray(cams, dtype=np.float32)
    palette = np.asarray(palette, dtype=np.uint8)
    height, width = image.shape[:2]
    if cams.ndim != 3 or cams.shape[1:] != (height, width) or len(class_names) != cams.shape[0]:
        raise ValueError(f"make_panel: need (T, {height}, {width}) CAMs and T class names, got CAMs "
                         f"{cams.shape} and {len(class_names)} names")
    if palette.shape != (256, 3):
        raise ValueError(f"make_panel: palette must be (256, 3), got {palette.shape}")
    labelled = [("pseudo label", pseudo_label)] + ([("ground truth", gt)] if gt is not None else [])
    for name, label in labelled:
        if np.shape(label) != (height, width):
            raise ValueError(f"make_panel: {name} must be ({height}, {width}), got {np.shape(label)}")

    tiles = [_caption(image, "image")]
    tiles += [_caption(cam_overlay(image, cam), name) for cam, name in zip(cams, class_names)]
    tiles += [_caption(palette[np.asarray(label).astype(np.int64)], name) for name, label in labelled]
    return _row(tiles)


def label_overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the palette colour of each labelled pixel over an image; ignored (255) pixels stay as they are.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        label: ``(H, W)`` integer labels in 0..255 (255 = ignore).
        palette: ``(256, 3)`` uint8 RGB colour of each label value.
        alpha: weight of the label colour, in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8 RGB: ``round((1 - alpha) * image + alpha * palette[label])`` where the label
        is not 255, ``image`` elsewhere.

    Raises:
        ValueError: if the shapes do not match, ``image`` is not uint8 RGB, the palette is not
        ``(256, 3)`` or a label is outside 0..255.
    """
    image, label = np.asarray(image), np.asarray(label)
    palette = np.asarray(palette, dtype=np.uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or label.shape != image.shape[:2]:
        raise ValueError(f"label_overlay: need a uint8 (H, W, 3) image and an (H, W) label map, got {image.dtype} "
                         f"{image.shape} and {label.shape}")
    if palette.shape != (256, 3):
        raise ValueError(f"label_overlay: palette must be (256, 3), got {palette.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label_overlay: label values must be in 0..255, got {label.min()}..{label.max()}")
    label = label.astype(np.int64)
    blended = cv2.addWeighted(np.ascontiguousarray(image), 1 - alpha, palette[label], alpha, 0)
    return np.where((label == 255)[..., None], image, blended)


def prediction_panel(
    image: np.ndarray, prediction: np.ndarray, gt: np.ndarray | None, palette: np.ndarray
) -> np.ndarray:
    """One row of captioned tiles: image | prediction over the image | prediction | ground truth.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        prediction: ``(H, W)`` integer labels in 0..255.
        gt: ``(H, W)`` integer ground truth (255 = ignore), or None to leave its tile out.
        palette: ``(256, 3)`` uint8 RGB colour of each label value.

    Returns:
        ``(H, n * W + (n - 1) * 4, 3)`` uint8 RGB with ``n = 4`` tiles (3 without ``gt``).

    Raises:
        ValueError: as :func:`label_overlay`, or if ``gt`` is not ``(H, W)``.
    """
    overlay = label_overlay(image, prediction, palette)
    palette = np.asarray(palette, dtype=np.uint8)
    tiles = [_caption(image, "image"), _caption(overlay, "prediction"),
             _caption(palette[np.asarray(prediction).astype(np.int64)], "prediction")]
    if gt is not None:
        if np.shape(gt) != np.shape(prediction):
            raise ValueError(f"prediction_panel: ground truth must be {np.shape(prediction)}, got {np.shape(gt)}")
        tiles.append(_caption(palette[np.asarray(gt).astype(np.int64)], "ground truth"))
    return _row(tiles)


def write_prediction_panels(dataset, prediction_dir: str | Path, vis_dir: str | Path, count: int = 8) -> list[Path]:
    """Write :func:`prediction_panel` PNGs for the first ``count`` images of ``dataset`` that have a prediction.

    Args:
        dataset: a dataset of :func:`rca.data.build_dataset` built without a transform (items hold
            ``id``, ``image`` ``(H, W, 3)`` uint8 and, where the split has masks, ``mask``).
        prediction_dir: folder of ``<id>.png`` label maps (``seg/predictions`` of ``train_seg --eval-only``).
        vis_dir: output folder; panels are written atomically as ``<id>.png``.
        count: how many panels at most.

    Returns:
        The paths written, in dataset order (images without a prediction file are skipped).
    """
    prediction_dir, vis_dir = Path(prediction_dir), Path(vis_dir)
    written = []
    for index, name in enumerate(dataset.ids):
        path = prediction_dir / f"{name}.png"
        if len(written) == count:
            break
        if not path.is_file():
            continue
        item = dataset[index]
        panel = prediction_panel(item["image"], load_label_png(path), item.get("mask"), dataset.palette)
        save_rgb_png(vis_dir / f"{name}.png", panel)
        written.append(vis_dir / f"{name}.png")
    return written


def _row(tiles: Sequence[np.ndarray]) -> np.ndarray:
    """Tiles of equal height side by side, separated by 4-pixel white gaps."""
    gap = np.full((tiles[0].shape[0], _GAP, 3), 255, dtype=np.uint8)
    row = [tiles[0]]
    for tile in tiles[1:]:
        row += [gap, tile]
    return np.concatenate(row, axis=1)
