"""One static report per experiment, made only from what the stages left in its work dir.

``write_report(DIR)`` writes ``DIR/report.html`` and ``DIR/report.md`` (atomically) and their charts
in ``DIR/report/``:

1. the summary table (tag mAP, CAM seed, CAM seed + CRF, pseudo-label and segmentation mIoU, and
   the oracle best CAM seed when its threshold differs from the one used);
2. per-class IoU bars of the CAM seed, CAM seed + CRF, pseudo label and segmentation;
3. the CAM seed mIoU over background thresholds (the oracle sweep);
4. the training curves (loss terms from TensorBoard, else from the ``metrics.json`` histories, and
   the validation scores);
5. the sample panels of ``gen_labels --vis`` (``DIR/vis/``) and the segmentation predictions
   (``DIR/seg/vis/`` panels of :func:`rca.vis.write_prediction_panels`, else the label maps of
   ``DIR/seg/predictions/``);
6. the logs and the config each stage ran with.

A missing or unreadable part (a stage not run yet, a split without masks) leaves a note in its
section instead of stopping the report; both formats of ``labels/metrics.json`` are read (see
:func:`canonical_labels`). Paths in the report are relative to ``DIR``, so the folder can be moved
or archived whole.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from rca import plots
from rca.io import atomic_open

FIGURE_DIR = "report"  # charts go to DIR/report/
STAGES = ("cls", "labels", "seg")  # sub-folders of a work dir, in pipeline order
LOGS = ("cls/train.log", "labels/gen_labels.log", "seg/train.log")

log = logging.getLogger(__name__)

# Where each field of labels/metrics.json is stored, newest format first. Older gen_labels wrote the
# seed at the best threshold of its sweep ("seed": {curve, best_threshold, miou}); newer ones write
# the CAM seed at labels.bg_threshold ("cam_seed") and the sweep apart as an oracle ("oracle_sweep").
_LABEL_KEYS = {
    "label_split": [("label_split",), ("split",)],
    "score_split": [("score_split",), ("split",)],
    "num_scored": [("num_scored",), ("num_images",)],
    "seed": [("cam_seed",), ("seed",)],
    "seed_crf": [("cam_seed_crf",), ("seed_crf",)],
    "threshold": [("cam_seed", "threshold"), ("seed", "best_threshold")],
    "curve": [("oracle_sweep", "curve"), ("seed", "curve")],
    "oracle_threshold": [("oracle_sweep", "best_threshold"), ("seed", "best_threshold")],
    "oracle_miou": [("oracle_sweep", "best_miou"), ("seed", "miou")],
}


def _lookup(mapping: dict, paths: list[tuple[str, ...]]):
    """The value at the first key path of ``paths`` present in ``mapping`` (None if none is)."""
    for path in paths:
        value = mapping
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            return value
    return None


def canonical_labels(raw: dict) -> dict:
    """``labels/metrics.json`` in one shape, whichever format the ``gen_labels`` that wrote it used.

    Returns:
        ``{"label_split", "score_split", "num_scored", "seed": {"miou", "iou_by_class", ...},
        "threshold", "seed_crf": {...}, "pseudo_label": {...}, "curve": {threshold: mIoU},
        "oracle_threshold", "oracle_miou"}``: scores in percent, thresholds as floats; an absent
        field is None (the blocks and ``curve``: empty dicts). ``threshold`` is None for the argmax
        seed of datasets without a background class.
    """
    found = {name: _lookup(raw, paths) for name, paths in _LABEL_KEYS.items()}
    for name in ("seed", "seed_crf", "curve"):
        found[name] = found[name] if isinstance(found[name], dict) else {}
    found["pseudo_label"] = raw.get("pseudo_label") or {}
    found["curve"] = {float(t): v for t, v in found["curve"].items()}
    for name in ("threshold", "oracle_threshold"):
        found[name] = None if found[name] is None else float(found[name])
    return found


@dataclass
class Run:
    """Everything the report reads from a work dir; absent files give empty dicts and a note."""

    work_dir: Path
    cls: dict = field(default_factory=dict)  # cls/metrics.json
    labels: dict = field(default_factory=dict)  # canonical_labels(labels/metrics.json)
    seg: dict = field(default_factory=dict)  # seg/metrics.json
    seg_eval: dict = field(default_factory=dict)  # seg/eval_metrics.json (train_seg --eval-only)
    notes: dict = field(default_factory=dict)  # file name -> why it was not read


def _read_json(work_dir: Path, name: str, notes: dict) -> dict:
    """The JSON object in ``work_dir / name``; ``{}`` and ``notes[name]`` when it is missing or unreadable."""
    path = work_dir / name
    if not path.is_file():
        notes[name] = "not found"
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        notes[name] = f"unreadable ({error})"
        return {}
    if not isinstance(value, dict):
        notes[name] = f"unreadable (a JSON {type(value).__name__}, not an object)"
        return {}
    return value


def read_run(work_dir: str | os.PathLike) -> Run:
    """Read the metrics files of a work dir (none of them is required).

    Raises:
        FileNotFoundError: if ``work_dir`` is not a folder.
    """
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        raise FileNotFoundError(f"{work_dir} is not a folder: give the work dir of a run, e.g. runs/demo")
    run = Run(work_dir)
    run.cls = _read_json(work_dir, "cls/metrics.json", run.notes)
    run.labels = canonical_labels(_read_json(work_dir, "labels/metrics.json", run.notes))
    run.seg = _read_json(work_dir, "seg/metrics.json", run.notes)
    if (work_dir / "seg" / "eval_metrics.json").is_file():  # written by --eval-only only
        run.seg_eval = _read_json(work_dir, "seg/eval_metrics.json", run.notes)
    return run


def summary_rows(run: Run) -> list[tuple[str, float | None, str]]:
    """``(name, value in percent or None, note)`` rows of the pipeline's headline numbers."""
    cls, labels, seg, seg_eval = run.cls, run.labels, run.seg, run.seg_eval
    seed, seed_crf, pseudo = labels["seed"], labels["seed_crf"], labels["pseudo_label"]
    at = "argmax" if labels["threshold"] is None else f"threshold {labels['threshold']:.2f}"
    scored = f"labels for {labels['label_split']}, scored on {labels['score_split']}"
    rows = [
        ("classifier val tag mAP", cls.get("best_val_map"),
         f"{cls.get('method')}, {cls.get('epochs_done')}/{cls.get('epochs')} epochs" if cls else ""),
        ("CAM seed mIoU", seed.get("miou"), f"{at}, {scored}" if seed else ""),
        ("CAM seed + CRF mIoU", seed_crf.get("miou"), at if seed_crf else ""),
        ("pseudo-label mIoU (strict)", pseudo.get("strict_miou"), ""),
        ("pseudo-label mIoU (lenient)", pseudo.get("lenient_miou"),
         f"{pseudo['labelled_fraction']:.1f}% labelled" if pseudo.get("labelled_fraction") is not None else ""),
        ("segmentation val mIoU", seg.get("best_val_miou"),
         f"best of training, DeepLab-v2 on {seg.get('labels')} labels, {seg.get('iterations_done')}/"
         f"{seg.get('iterations')} iterations" if seg else ""),
    ]
    if seg_eval:
        rows.append(("segmentation eval mIoU", seg_eval.get("miou"),
                     "train_seg --eval-only, protocol " + json.dumps(seg_eval.get("protocol", {}))))
    if labels["oracle_threshold"] is not None and labels["oracle_threshold"] != labels["threshold"]:
        rows.append(("oracle: best CAM seed mIoU", labels["oracle_miou"],
                     f"threshold {labels['oracle_threshold']:.2f} picked on the scored masks (upper bound)"))
    return rows


@dataclass
class Section:
    """One titled part of the report; ``note`` says what is missing (or replaces the content)."""

    title: str = ""
    note: str = ""
    table: list[tuple[str, str, str]] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (path relative to the work dir, caption)
    code: str = ""
    links: list[tuple[str, str]] = field(default_factory=list)  # (relative path, text)
    stretch: bool = False  # images drawn at the page width (small panels), not at their own size


def _missing(run: Run, *files: str) -> str:
    """``"labels/metrics.json: not found"``-style text for the files of ``files`` that were not read."""
    return "; ".join(f"{name}: {run.notes[name]}" for name in files if name in run.notes)


def _summary_section(run: Run, limit: int) -> Section:
    rows = [(name, "n/a" if value is None else f"{value:.2f}", note) for name, value, note in summary_rows(run)]
    return Section(note=_missing(run, "cls/metrics.json", "labels/metrics.json", "seg/metrics.json"),
                   table=rows)


def _iou_section(run: Run, limit: int) -> Section:
    split = f" ({run.labels['score_split']})" if run.labels["score_split"] else ""
    series = {
        f"CAM seed{split}": run.labels["seed"].get("iou_by_class") or {},
        "CAM seed + CRF": run.labels["seed_crf"].get("iou_by_class") or {},
        "pseudo label (lenient)": run.labels["pseudo_label"].get("iou_by_class") or {},
        "segmentation (val)": run.seg_eval.get("iou_by_name") or run.seg.get("iou_by_class") or {},
    }
    series = {name: scores for name, scores in series.items() if scores}
    note = _missing(run, "labels/metrics.json", "seg/metrics.json")
    if not series:
        return Section(note=note or "no per-class IoU in the metrics files")
    plots.iou_bars(series, run.work_dir / FIGURE_DIR / "iou_by_class.png")
    return Section(note=note, images=[(f"{FIGURE_DIR}/iou_by_class.png", "IoU by class (%)")])


def _seed_curve_section(run: Run, limit: int) -> Section:
    curve = run.labels["curve"]
    if not curve:
        return Section(note=_missing(run, "labels/metrics.json")
                       or "no threshold sweep in labels/metrics.json (none without a background class)")
    plots.seed_curve(curve, run.work_dir / FIGURE_DIR / "seed_curve.png", run.labels["threshold"],
                     run.labels["seed_crf"].get("miou"))
    caption = ("CAM seed mIoU (%) by constant background threshold; the best point is an oracle "
               "(picked on the scored masks)")
    return Section(images=[(f"{FIGURE_DIR}/seed_curve.png", caption)])


def _tb_scalars(log_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """``{tag: (steps, values)}`` of the TensorBoard event files in ``log_dir`` (``{}`` if none).

    A resumed run appends a second event file; a step logged twice keeps its last value.
    """
    if not log_dir.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["scalars"]:
        by_step = {event.step: event.value for event in accumulator.Scalars(tag)}
        steps = sorted(by_step)
        scalars[tag] = (steps, [by_step[step] for step in steps])
    return scalars


def _history_curves(history: list[dict], x_key: str, prefix: str) -> dict[str, tuple[list, list]]:
    """``{name: (x, y)}`` of the ``history`` entries whose keys start with ``prefix`` (numbers only)."""
    names = dict.fromkeys(k for record in history for k, v in record.items()
                          if k.startswith(prefix) and isinstance(v, (int, float)))
    return {name: ([r[x_key] for r in history if name in r], [r[name] for r in history if name in r]) for name in names}


def _training_section(run: Run, limit: int) -> Section:
    panels = []
    for stage, x_key, loss_title, score_key, score_title in (
        ("cls", "epoch", "classifier loss", "val_map", "classifier val tag mAP (%)"),
        ("seg", "iteration", "segmentation loss", "val_miou", "segmentation val mIoU (%)"),
    ):
        history = getattr(run, stage).get("history") or []
        losses = {tag.split("/", 1)[-1]: curve for tag, curve in _tb_scalars(run.work_dir / stage / "tb").items()
                  if "loss" in tag and "epoch" not in tag}
        if losses:
            panels.append((f"{loss_title} (TensorBoard)", "iteration", losses))
        elif history:
            panels.append((f"{loss_title} (mean per {x_key})", x_key, _history_curves(history, x_key, "train_")))
        scores = _history_curves(history, x_key, score_key)
        if scores.get(score_key, ((), ()))[0]:
            panels.append((score_title, x_key, {score_key: scores[score_key]}))
    note = _missing(run, "cls/metrics.json", "seg/metrics.json")
    if not panels:
        return Section(note=note or "no training history on disk")
    plots.training_curves(panels, run.work_dir / FIGURE_DIR / "training.png")
    return Section(note=note, images=[(f"{FIGURE_DIR}/training.png", "training curves")])


def _pictures(run: Run, folder: str, limit: int) -> list[tuple[str, str]]:
    """``(relative path, id)`` of the first ``limit`` PNGs in ``DIR/folder`` (sorted by name)."""
    directory = run.work_dir / folder
    files = sorted(directory.glob("*.png")) if directory.is_dir() else []
    return [(f"{folder}/{path.name}", path.stem) for path in files[:limit]]


def _panels_section(run: Run, limit: int) -> Section:
    images = _pictures(run, "vis", limit)
    if not images:
        return Section(note="no panels in vis/: run gen_labels with --vis N")
    return Section(note="image | CAM per tagged class | pseudo label | ground truth", images=images, stretch=True)


def _predictions_section(run: Run, limit: int) -> Section:
    images = _pictures(run, "seg/vis", limit)
    if images:
        return Section(note="image | prediction over the image | prediction | ground truth",
                       images=images, stretch=True)
    images = _pictures(run, "seg/predictions", limit)
    if images:
        return Section(note="predicted label maps (seg/predictions/; no overlay panels "
                                                        "in seg/vis/)", images=images)
    return Section(note="no predictions on disk: run train_seg --eval-only")


def _files_section(run: Run, limit: int) -> Section:
    links = [(name, name) for name in LOGS if (run.work_dir / name).is_file()]
    configs = {stage: (run.work_dir / stage / "config.yaml") for stage in STAGES}
    texts = {stage: path.read_text() for stage, path in configs.items() if path.is_file()}
    if len(set(texts.values())) == 1:
        same = " (identical)" if len(texts) > 1 else ""
        code = f"# {', '.join(f'{s}/config.yaml' for s in texts)}{same}\n{next(iter(texts.values()))}"
    else:
        code = "\n".join(f"# {stage}/config.yaml\n{text}" for stage, text in texts.items())
    note = "TensorBoard: tensorboard --logdir " + str(run.work_dir)
    if not texts:
        note += "; no config.yaml found in " + ", ".join(STAGES)
    return Section(note=note, links=links, code=code)


def build_sections(run: Run, max_panels: int = 8) -> list[Section]:
    """The report's sections in order; a section whose inputs cannot be drawn gets a note instead."""
    builders = {
        "Summary": _summary_section, "IoU by class": _iou_section, "CAM seed threshold curve": _seed_curve_section,
        "Training curves": _training_section, "Sample panels": _panels_section,
        "Segmentation predictions": _predictions_section, "Logs and config": _files_section,
    }
    sections = []
    for title, build in builders.items():
        try:
            section = build(run, max_panels)
        except (KeyError, TypeError, ValueError, AttributeError) as error:  # an unexpected file format
            log.warning("report section %r left out: %r", title, error)
            section = Section(note=f"left out: could not read its inputs ({error!r})")
        section.title = title
        sections.append(section)
    return sections


def render_markdown(title: str, sections: list[Section]) -> str:
    """The sections as Markdown (images linked by their relative paths)."""
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.note:
            lines += [f"*{section.note}*", ""]
        if section.table:
            lines += ["| metric | value | note |", "|---|---:|---|"]
            lines += [f"| {name} | {value} | {note} |" for name, value, note in section.table] + [""]
        lines += [f"![{caption}]({quote(path)})" for path, caption in section.images]
        if section.images:
            lines.append("")
        lines += [f"- [{text}]({quote(path)})" for path, text in section.links]
        if section.links:
            lines.append("")
        if section.code:
            lines += ["```yaml", section.code.rstrip("\n"), "```", ""]
    return "\n".join(lines)


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}td.v{text-align:right}"
        "figure{margin:0.5em 0}img{max-width:100%}img.stretch{width:100%;image-rendering:pixelated}"
        "figcaption{font-size:0.85em;color:#555}"
        ".note{color:#666;font-style:italic}pre{background:#f5f5f5;padding:0.8em;overflow-x:auto}")


def render_html(title: str, sections: list[Section]) -> str:
    """The sections as one static HTML page (images referenced by their relative paths)."""
    esc = html.escape
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{esc(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{esc(section.title)}</h2>")
        if section.note:
            parts.append(f"<p class=\"note\">{esc(section.note)}</p>")
        if section.table:
            parts.append("<table><tr><th>metric</th><th>value</th><th>note</th></tr>")
            parts += [f"<tr><td>{esc(name)}</td><td class=\"v\">{esc(value)}</td><td>{esc(note)}</td></tr>"
                      for name, value, note in section.table]
            parts.append("</table>")
        style = " class=\"stretch\"" if section.stretch else ""
        parts += [f"<figure><img src=\"{esc(quote(path))}\"{style} alt=\"{esc(caption)}\">"
                  f"<figcaption>{esc(caption)}</figcaption></figure>" for path, caption in section.images]
        if section.links:
            parts.append("<ul>" + "".join(f"<li><a href=\"{esc(quote(path))}\">{esc(text)}</a></li>"
                                          for path, text in section.links) + "</ul>")
        if section.code:
            parts.append(f"<pre>{esc(section.code)}</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(work_dir: str | os.PathLike, max_panels: int = 8) -> tuple[Path, Path]:
    """Write ``DIR/report.html``, ``DIR/report.md`` and their charts in ``DIR/report/`` (all atomically).

    Args:
        work_dir: the work dir of a run (``runs/<exp>``); any of its stages may be missing.
        max_panels: at most this many sample panels and prediction pictures each.

    Returns:
        The paths of the HTML and Markdown reports.

    Raises:
        FileNotFoundError: if ``work_dir`` is not a folder.
    """
    run = read_run(work_dir)
    sections = build_sections(run, max_panels)
    title = f"Report of {run.work_dir.resolve().name}"
    html_path, md_path = run.work_dir / "report.html", run.work_dir / "report.md"
    with atomic_open(html_path, "w") as f:
        f.write(render_html(title, sections))
    with atomic_open(md_path, "w") as f:
        f.write(render_markdown(title, sections))
    return html_path, md_path
