"""scripts/benchmark.py end to end on a tiny setting (demo config, crops of 32, batch 2, one timed call):
it runs, times the RCA step in its steady state and writes every number to its JSON file. Timings
themselves are not asserted (the script reports them against its targets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rca.losses import CONTRAST_LOSSES

REPO = Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_every_section_in_its_steady_state(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--config", str(REPO / "rca" / "configs" / "demo.yaml"),
               "--quick", "--batch", "2", "--repeats", "1", "--threads", "1", "--set", "cls.crop_size=32",
               "--set", "seg.crop_size=32", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {"cls", "cam_inference", "crf", "seg", "threads", "load_average", "peak_memory_mb"} <= results.keys()
    assert "pool" not in results and results["threads"] == 1 and results["repeats"] == 1

    cls = results["cls"]
    assert set(cls["steps"]) == {"cam", "rca", "rca_no_contrast", "rca_no_aggregation", "rca_no_write"}
    assert cls["batch"] == 2 and cls["crop_size"] == 32
    steady = cls["steady_state"]  # demo: 4 classes x 100 slots, 4 centres per class
    assert steady["memory_entries"] == steady["memory_slots"] == 400 and steady["centres"] == 16
    assert steady["contrast_loss"] > 0
    assert cls["rca_over_cam"] == pytest.approx(cls["steps"]["rca"]["s"] / cls["steps"]["cam"]["s"])
    assert sum(cls["shares"].values()) == pytest.approx(1.0)
    assert cls["steps"]["rca"]["gflop"] > cls["steps"]["cam"]["gflop"] > 0
    assert all(step["gflop_per_s"] > 0 and step["peak_fraction"] is None for step in cls["steps"].values())

    crf = results["crf"]
    assert crf["restricted_labels"] == crf["tagged"] + 1 < crf["all_labels"] == 21
    assert crf["speedup"] == pytest.approx(crf["all_s"] / crf["restricted_s"])
    assert set(results["cam_inference"]["per_image"]) == {"cam", "rca"}

    seg = results["seg"]
    assert set(seg["steps"]) == {"ce", *CONTRAST_LOSSES} and set(seg["added_share"]) == set(CONTRAST_LOSSES)
    over = {name for name, met in seg["target_met"].items() if not met}
    assert set(seg.get("where_time_goes", {})) == over
    assert seg["inference"]["s"] > 0
