"""Charts of a run's numbers (matplotlib, Agg): per-class IoU bars, the seed-threshold curve, training curves.

Each function draws one PNG from plain numbers (the contents of the stages' ``metrics.json`` files
and TensorBoard scalars) and writes it atomically. Figures are built with ``matplotlib.figure.Figure``
rather than ``pyplot``, so no global state or display is involved and any process (a stage, a test,
a DataLoader worker) can call them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rca.io import atomic_open

Curve = tuple[Sequence[float], Sequence[float]]  # (x values, y values)


def _save(figure: Figure, path: str | os.PathLike) -> None:
    """Write ``figure`` as a 100-dpi PNG atomically."""
    with atomic_open(path, "wb") as f:
        figure.savefig(f, format="png", dpi=100)


def iou_bars(series: Mapping[str, Mapping[str, float]], path: str | os.PathLike, title: str = "IoU by class") -> None:
    """Grouped horizontal bars: one group per class, one bar per series (e.g. seed, pseudo label, segmentation).

    Args:
        series: ``{series name: {class name: IoU in percent}}``; a class missing from a series, or
            with a NaN IoU (absent from both ground truth and prediction), gets no bar.
        path: output PNG.
        title: figure title.

    Raises:
        ValueError: if ``series`` is empty.
    """
    if not series:
        raise ValueError("iou_bars: no series to draw")
    classes = list(dict.fromkeys(name for scores in series.values() for name in scores))
    height = 0.8 / len(series)
    figure = Figure(figsize=(7, 1.4 + (0.1 + 0.2 * len(series)) * len(classes)), layout="constrained")
    axes = figure.add_subplot()
    for k, (label, scores) in enumerate(series.items()):
        values = [scores.get(name, math.nan) for name in classes]
        values = [math.nan if value is None else value for value in values]
        positions = [i + (k - (len(series) - 1) / 2) * height for i in range(len(classes))]
        bars = axes.barh(positions, values, height=height, label=label)
        if len(classes) <= 40:  # numbers on the bars while they stay readable
            axes.bar_label(bars, fmt="%.1f", padding=2, fontsize=7)
    axes.set_yticks(range(len(classes)), classes)
    axes.invert_yaxis()  # first class on top
    axes.set_xlim(0, 110)
    axes.set_xlabel("IoU (%)")
    axes.set_title(title)
    axes.grid(axis="x", alpha=0.3)
    figure.legend(loc="outside lower center", ncols=min(4, len(series)), fontsize=8)  # clear of the bars
    _save(figure, path)


def seed_curve(
    curve: Mapping[float, float],
    path: str | os.PathLike,
    threshold: float | None = None,
    crf_miou: float | None = None,
) -> None:
    """CAM seed mIoU against the constant background threshold (the oracle sweep of ``gen_labels``).

    Args:
        curve: ``{background threshold in [0, 1]: CAM seed mIoU in percent}``.
        path: output PNG.
        threshold: the threshold of the reported CAM seed (``labels.bg_threshold``), a vertical line.
        crf_miou: CAM seed + CRF mIoU at ``threshold``, marked with a star.

    Raises:
        ValueError: if ``curve`` is empty.
    """
    if not curve:
        raise ValueError("seed_curve: empty curve")
    points = sorted((float(t), float(v)) for t, v in curve.items())
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    axes = figure.add_subplot()
    axes.plot([t for t, _ in points], [v for _, v in points], marker="o", label="CAM seed")
    best_t, best_v = max(points, key=lambda p: -math.inf if math.isnan(p[1]) else p[1])
    axes.annotate(f"oracle best {best_v:.1f} at {best_t:.2f}", (best_t, best_v), textcoords="offset points",
                  xytext=(0, 8), ha="center", fontsize=8)
    if threshold is not None:
        axes.axvline(threshold, color="grey", linestyle="--", linewidth=1, label=f"used threshold {threshold:.2f}")
        if crf_miou is not None:
            axes.plot([threshold], [crf_miou], marker="*", markersize=12, linestyle="none", label="CAM seed + CRF")
    axes.set_xlabel("background threshold")
    axes.set_ylabel("mIoU (%)")
    axes.set_title("CAM seed mIoU by background threshold")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    _save(figure, path)


def training_curves(panels: Sequence[tuple[str, str, Mapping[str, Curve]]], path: str | os.PathLike) -> None:
    """Line charts side by side (two per row), e.g. the loss terms and the validation score of each trainer.

    Args:
        panels: ``(title, x-axis label, {line name: (x, y)})`` per chart.
        path: output PNG.

    Raises:
        ValueError: if ``panels`` is empty.
    """
    if not panels:
        raise ValueError("training_curves: no panels to draw")
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5 * columns, 3.2 * rows), layout="constrained")
    for k, (title, xlabel, lines) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, k + 1)
        for name, (x, y) in lines.items():
            axes.plot(x, y, label=name, marker="o" if len(x) <= 20 else None, markersize=3)
        axes.set_title(title)
        axes.set_xlabel(xlabel)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and iterations
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    _save(figure, path)
