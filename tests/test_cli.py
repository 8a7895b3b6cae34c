"""Command lines (rca.cli): every entry point answers --help and --print-config without importing torch,
in plain text, and --print-config prints the config the stage would run with."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rca.cli import plain_text
from rca.config import config_to_dict, load_config

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("stages/*.py"), *REPO.glob("scripts/*.py")]
                      if p.name != "__init__.py")
CONFIG_ENTRY_POINTS = ["stages/train_cls.py", "stages/gen_labels.py", "stages/train_seg.py", "scripts/benchmark.py",
                       "scripts/summary.py"]
HEAVY = {"torch", "torchvision", "timm", "tensorboard", "cv2", "matplotlib", "pydensecrf"}


def _run(script: str, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime script args``: the result and the heavy top-level packages it imported."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-X", "importtime", script, *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:") and line.count("|") == 2}
    return result, imported & HEAVY


def test_every_entry_point_is_found():
    assert {"stages/train_cls.py", "stages/gen_labels.py", "stages/train_seg.py", "stages/infer.py",
            "scripts/benchmark.py", "scripts/check_dataset.py", "scripts/summary.py"} <= set(ENTRY_POINTS)


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help_answers_in_plain_text_without_torch(script):
    result, heavy = _run(script, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert heavy == set(), f"{script} --help imported {sorted(heavy)}"
    assert result.stdout.startswith("usage:")
    assert "``" not in result.stdout and not re.search(r":[a-z]+:`", result.stdout)


@pytest.mark.parametrize("script", CONFIG_ENTRY_POINTS)
def test_print_config_prints_defaults_file_and_overrides_without_torch(script, tmp_path):
    config_file = REPO / "rca" / "configs" / "coco_mini.yaml"
    overrides = ["--set", "cls.lr=0.5", "cls.epochs=3", "--set", "labels.scales=[1.0, 2.0]"]
    work_dir = tmp_path / "run"
    result, heavy = _run(script, "--config", str(config_file), *overrides, "--work-dir", str(work_dir),
                         "--print-config")
    assert result.returncode == 0, result.stderr[-2000:]
    assert heavy == set(), f"{script} --print-config imported {sorted(heavy)}"
    printed = yaml.safe_load(result.stdout)
    assert printed == config_to_dict(load_config(config_file, ["cls.lr=0.5", "cls.epochs=3",
                                                               "labels.scales=[1.0, 2.0]"]))
    # the overrides: two after one --set, one after another
    assert printed["cls"]["lr"] == 0.5 and printed["cls"]["epochs"] == 3
    assert printed["labels"]["scales"] == [1.0, 2.0]
    assert printed["seg"]["eval_crf"] is False  # a default the file does not set
    assert not work_dir.exists()  # printed and stopped: no outputs


def test_print_config_of_a_bad_override_is_an_argument_error():
    result, heavy = _run("stages/train_cls.py", "--set", "cls.lr=abc", "--print-config")
    assert result.returncode == 2 and heavy == set()
    assert "cls.lr: expected float, got 'abc'" in result.stderr and "Traceback" not in result.stderr


def test_config_help_lists_every_shipped_config():
    result, _ = _run("stages/train_seg.py", "--help")
    shipped = sorted(p.name for p in (REPO / "rca" / "configs").glob("*.yaml"))
    assert len(shipped) >= 10
    help_text = " ".join(result.stdout.split())  # argparse wraps the list over lines
    for name in shipped:
        assert name in help_text


def test_gen_labels_names_its_processes_apart_from_dataloader_workers():
    result, _ = _run("stages/gen_labels.py", "--help")
    assert "--crf-processes N" in result.stdout and "--workers" not in result.stdout
    rejected, _ = _run("stages/gen_labels.py", "--workers", "2")
    assert rejected.returncode == 2 and "unrecognized arguments: --workers" in rejected.stderr


def test_plain_text_drops_rest_markup():
    doc = "Writes ``DIR/x.pt`` (:func:`rca.io.save_json`, :class:`~rca.engine.run.TrainingRun`)::\n\n    a b"
    assert plain_text(doc) == "Writes DIR/x.pt (rca.io.save_json, TrainingRun):\n\n    a b"
