"""Config fingerprints: a stage never silently reuses outputs made with other settings.

Each stage stores, next to its outputs, the settings that affect them (``fingerprint.json``: the
stage, a SHA-256 of the settings and the settings themselves as ``{"section.key": value}``). Before
it runs (or skips finished work), :func:`check_fingerprint` compares the stored settings with the
current config and refuses on a difference, naming the changed keys and the way out
(``--overwrite``). Settings that do not change what a stage writes (worker counts, log intervals,
the experiment name) are left out, and so are the keys of later stages. A stage's settings include
those of the stages whose outputs it reads (``labels`` reads the classifier, ``seg`` the pseudo
labels unless ``seg.labels`` is ``gt``), so changing ``cls.lr`` makes every later output stale.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rca.config import Config, config_to_dict
from rca.io import save_json

FILENAME = "fingerprint.json"

EXTRA_PREFIX = "input."
"""Keys of settings from outside the config (:func:`file_settings`)."""

STAGES = ("cls", "labels", "seg")
"""Stage names: ``cls`` (train_cls), ``labels`` (gen_labels), ``seg`` (train_seg)."""

# Keys that never change a stage's outputs: processes, logging, the experiment's name.
IGNORED_KEYS = frozenset({"name", "data.num_workers", "cls.log_interval", "seg.log_interval"})

# Keys of a section a stage reads that only later stages use.
STAGE_IGNORED_KEYS = {
    "cls": frozenset({"data.label_split", "data.score_split"}),
    "labels": frozenset(),
    "seg": frozenset(),
}


class StaleOutputsError(RuntimeError):
    """A stage's output folder holds results made with other settings."""


def stage_settings(config: Config, stage: str) -> dict[str, Any]:
    """The settings that affect ``stage``'s outputs, flat ``{"section.key": value}``.

    ``cls``: ``seed``, ``data`` and ``cls``; ``labels``: those and ``labels``; ``seg``: ``seed``,
    ``data`` and ``seg``, plus ``cls`` and ``labels`` when it trains on pseudo labels. Values are
    plain JSON values (tuples as lists, mapping keys as strings), so they compare equal to what
    :func:`read_fingerprint` returns.

    Raises:
        ValueError: unknown ``stage``.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    sections = {"cls": ["data", "cls"], "labels": ["data", "cls", "labels"], "seg": ["data", "seg"]}[stage]
    if stage == "seg" and config.seg.labels == "pseudo":
        sections += ["cls", "labels"]
    tree = config_to_dict(config)
    flat = {"seed": tree["seed"]}
    for section in sections:
        flat.update({f"{section}.{key}": value for key, value in tree[section].items()})
    ignored = IGNORED_KEYS | STAGE_IGNORED_KEYS[stage]
    flat = {key: value for key, value in flat.items() if key not in ignored}
    return json.loads(json.dumps(flat, sort_keys=True))


def fingerprint(settings: dict[str, Any]) -> str:
    """SHA-256 (hex) of the settings' canonical JSON (sorted keys); equal settings, equal hash."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def read_fingerprint(out_dir: str | Path) -> dict[str, Any] | None:
    """The stored ``{"stage", "hash", "settings"}`` of ``out_dir``, or ``None`` when there is none."""
    path = Path(out_dir) / FILENAME
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every key whose value differs (absent keys shown as ``(absent)``)."""
    missing = object()
    lines = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, missing), new.get(key, missing)
        if before != after:
            show = [("(absent)" if v is missing else json.dumps(v)) for v in (before, after)]
            lines.append(f"{key}: {show[0]} -> {show[1]}")
    return lines


def file_settings(name: str, path: str | Path) -> dict[str, str]:
    """``{"input.<name>.sha256": SHA-256 (hex) of the file's bytes}``, or ``{}`` when there is no such file.

    For :func:`check_fingerprint`'s ``extra``: ``gen_labels`` ties its CAMs to the classifier
    checkpoint they came from (``--checkpoint`` or ``DIR/cls/best.pt``), so that CAMs of another
    checkpoint are refused like those of another config. A checkpoint deleted after its CAMs were
    made has no hash to compare; its key then counts as unchanged.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    digest = hashlib.sha256()
    with open(path, "rb") as f:  # in 1 MiB blocks (hashlib.file_digest needs Python 3.11; README: 3.10+)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {f"{EXTRA_PREFIX}{name}.sha256": digest.hexdigest()}


def check_fingerprint(out_dir: str | Path, config: Config, stage: str, overwrite: bool = False,
                      write: bool = True, extra: dict[str, Any] | None = None) -> None:
    """Refuse outputs made with other settings; record the current ones. Call before a stage runs.

    If ``out_dir`` holds a fingerprint whose settings differ from ``stage_settings(config,
    stage)`` and ``overwrite`` is false, raise. Otherwise (no fingerprint yet, same settings, or
    ``overwrite``) write the current fingerprint, so that partial outputs of an interrupted run
    are also tied to the settings that made them.

    Args:
        out_dir: the stage's output folder (``DIR/cls``, ``DIR/labels``, ``DIR/seg``); created when
            written.
        config: the resolved config the stage runs with.
        stage: one of :data:`STAGES`.
        overwrite: the stage's ``--overwrite`` flag (its outputs will be redone).
        write: whether this process writes the file (``False`` on non-main distributed ranks).
        extra: settings from outside the config that also make the outputs (e.g. an input file's
            hash from :func:`file_settings`); a key stored before but absent here is taken as
            unchanged (its file is gone, nothing to compare).

    Raises:
        StaleOutputsError: the settings differ; the message lists each changed key with its old
            and new value and names ``--overwrite``.
        ValueError: unknown ``stage``.
    """
    settings = stage_settings(config, stage)
    stored = read_fingerprint(out_dir)
    settings.update(extra or {})
    if stored is not None:  # a key of ``extra`` whose file is gone: nothing to compare
        settings.update({key: value for key, value in stored.get("settings", {}).items()
                         if key not in settings and key.startswith(EXTRA_PREFIX)})
    if stored is not None and stored.get("hash") != fingerprint(settings) and not overwrite:
        changes = changed_keys(stored.get("settings", {}), settings) or ["(fingerprint file unreadable)"]
        raise StaleOutputsError(
            f"{out_dir} holds {stage} outputs made with other settings:\n  " + "\n  ".join(changes)
            + "\nRe-run with --overwrite to redo them with the current config, or choose another --work-dir."
        )
    if write and (stored is None or stored.get("hash") != fingerprint(settings)):
        save_json(Path(out_dir) / FILENAME, {"stage": stage, "hash": fingerprint(settings), "settings": settings})
