"""Crash safety: each stage, run as a subprocess, is killed with SIGKILL in the middle of its work and
run again; the rerun finishes with exactly what an uninterrupted run writes.

* ``train_cls`` checkpoints once per epoch: killed in the middle of epoch 1, ``--resume`` redoes
  epoch 1 from ``last.pt`` of epoch 0 and ends with the uninterrupted run's weights;
* ``train_seg`` checkpoints every ``seg.val_interval`` iterations, also mid-epoch: killed after its
  checkpoint at iteration 3 (an epoch has 4), ``--resume`` ends with the uninterrupted run's weights;
* ``gen_labels`` is killed while making CAMs, then while making pseudo labels: each rerun writes
  only the files that are missing, and the last one the uninterrupted run's scores.

Weights are compared tensor by tensor with ``torch.equal``, scores exactly (one torch thread, data
loading in the main process: CPU results are bitwise reproducible). The killed runs are
``stages/<name>.py`` processes; the uninterrupted runs and the final reruns are made in-process
(``stages.<name>.main``: a fresh process would only add the ~5 s of importing torch).

Killing at a known point, with no hook in the stages: an image of the VOC-layout dataset is swapped
for a named pipe (FIFO). A stage that reads it blocks in ``open`` until a writer opens the pipe; the
test's non-blocking ``open`` for writing succeeds exactly when the stage is there, so the stage is
then stopped at the read of that image. The test either kills it there or writes the image's bytes
into the pipe to let it go on (a first pipe on a validation image holds the stage until the second
one is in place, so nothing depends on timing). Which image is piped sets the kill point: the stages
read the training images in the seeded ``DistributedSampler`` order of each epoch (recomputed here),
and ``gen_labels`` reads its split in list order.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from rca.data import build_dataset
from rca.engine.checkpoint import load_checkpoint
from rca.io import load_label_png, load_npz, remove_partial_writes
from stages import gen_labels, train_cls, train_seg

from helpers import write_voc

REPO = Path(__file__).resolve().parents[1]
SEED = 0  # demo.yaml's
CLS_BATCH, SEG_BATCH = 8, 4
TIMEOUT = 300  # seconds a stage may take to reach a piped image (a few, unloaded)
TIMINGS = {"s_per_iter", "peak_memory_mb"}  # history keys that measure the machine, not the run
pytestmark = [pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="the kill points are named pipes (POSIX)"),
              pytest.mark.usefixtures("one_thread")]

# demo.yaml shrunk: 16 training images of 48x48 (2 classifier iterations or 4 DeepLab iterations an
# epoch), 8 val images, one test scale; DeepLab trains on the true masks, independent of gen_labels.
OVERRIDES = [
    "data.name=voc", "data.options={}", "data.train_split=train", "data.val_split=val", "data.label_split=train",
    "data.num_workers=0",
    f"cls.batch_size={CLS_BATCH}", "cls.epochs=2", "cls.crop_size=48", "cls.resize_long=[40, 56]",
    "cls.memory_size=8", "cls.num_centres=2", "cls.embed_dim=16", "cls.contrast_warmup_epochs=1",
    "cls.write_threshold=0.0",
    "labels.scales=[1.0]",
    "seg.labels=gt", "seg.iterations=6", f"seg.batch_size={SEG_BATCH}", "seg.crop_size=48", "seg.val_interval=3",
]  # fmt: skip



@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """The synthetic shapes in the VOC layout: ``(VOC2012 folder, {split: ids})``."""
    root = tmp_path_factory.mktemp("data") / "VOC2012"
    splits = {split: build_dataset("synthetic", None, split, num_images=count, image_size=48, num_classes=2)
              for split, count in (("train", 16), ("val", 8))}
    return root, write_voc(root, splits)


def _args(root: Path, work_dir: Path, *extra: str) -> list[str]:
    overrides = [f"data.root={root}", *OVERRIDES]
    return ["--work-dir", str(work_dir), "--device", "cpu", *[a for o in overrides for a in ("--set", o)], *extra]


@pytest.fixture(scope="module")
def classifier(voc, tmp_path_factory) -> Path:
    """The uninterrupted train_cls run (in-process): its work dir."""
    work_dir = tmp_path_factory.mktemp("straight")
    assert train_cls.main(_args(voc[0], work_dir)) == 0
    return work_dir


# ---- running, stopping and killing a stage ---------------------------------------------------------
def _start(stage: str, argv: list[str], log: Path) -> subprocess.Popen:
    """``stages/<stage>.py argv`` in a new process with one torch thread; its output goes to ``log``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, str(REPO / "stages" / f"{stage}.py"), *argv], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _pipe(path: Path) -> bytes:
    """Swap the file at ``path`` for a named pipe (atomically); return the file's bytes."""
    content = path.read_bytes()
    fifo = path.with_name(f".{path.name}.fifo")
    os.mkfifo(fifo)
    os.replace(fifo, path)
    return content


def _unpipe(path: Path, content: bytes) -> None:
    """Put the file back in place of the pipe (atomically: a reader never sees a partial file)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def _wait_until_read(process: subprocess.Popen, path: Path, log: Path) -> int:
    """Wait until ``process`` opens the pipe at ``path``; return the pipe's write end (blocking).

    From then on ``process`` waits in the read of that pipe until bytes come or it is killed.
    """
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while no process has it open to read
        except OSError as error:
            if error.errno != errno.ENXIO:
                raise
        else:
            os.set_blocking(fd, True)
            return fd
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"the stage did not read {path.name} (exit status {process.returncode}):\n"
                        f"{log.read_text()[-3000:]}")
        time.sleep(0.005)


def _let_through(fd: int, content: bytes) -> None:
    """Give the waiting reader the image's bytes and the end of the file."""
    with os.fdopen(fd, "wb") as pipe:
        pipe.write(content)


def _kill_at_read(process: subprocess.Popen, path: Path, log: Path) -> None:
    """SIGKILL ``process`` once it is blocked reading the pipe at ``path``."""
    fd = _wait_until_read(process, path, log)
    process.send_signal(signal.SIGKILL)
    process.wait()
    os.close(fd)
    assert process.returncode == -signal.SIGKILL


def _epoch_order(ids: list[str], epoch: int) -> list[str]:
    """The training images of one epoch in the order the trainers read them (one process)."""
    sampler = DistributedSampler(ids, num_replicas=1, rank=0, shuffle=True, seed=SEED, drop_last=True)
    sampler.set_epoch(epoch)
    return [ids[i] for i in sampler]


def _kill_after_checkpoint(stage: str, root: Path, argv: list[str], holder: str, victim: str, log: Path) -> None:
    """Start ``stage`` and kill it at its first read of image ``victim`` after its first checkpoint.

    ``holder`` (a val image) holds the stage in its first validation, before the checkpoint, while
    ``victim`` is swapped for a pipe; both files are back in place when this returns.
    """
    images = root / "JPEGImages"
    held = _pipe(images / f"{holder}.jpg")
    process = _start(stage, argv, log)
    fd = _wait_until_read(process, images / f"{holder}.jpg", log)
    killed = _pipe(images / f"{victim}.jpg")
    _unpipe(images / f"{holder}.jpg", held)
    _let_through(fd, held)
    try:
        _kill_at_read(process, images / f"{victim}.jpg", log)
    finally:
        _unpipe(images / f"{victim}.jpg", killed)


def _assert_same_run(resumed: dict, straight: dict) -> None:
    """Equal weights (buffers included: batch norm, memory bank, centres) and equal history."""
    assert resumed["model"].keys() == straight["model"].keys()
    for name, tensor in straight["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    history = [[{k: v for k, v in record.items() if k not in TIMINGS} for record in state["history"]]
               for state in (resumed, straight)]
    assert json.dumps(history[0]) == json.dumps(history[1])  # as text: the AP of an absent class is NaN


# ---- the file writes ------------------------------------------------------------------------------
def test_a_write_killed_half_way_leaves_the_previous_file(tmp_path):
    """Every output goes through :func:`rca.io.atomic_open`: a process killed in the middle of a
    write leaves the file as it was (here: its old bytes) and the partial bytes under a hidden
    temporary name that no stage reads."""
    target, hold, log = tmp_path / "labels" / "a.png", tmp_path / "hold", tmp_path / "writer.log"
    target.parent.mkdir()
    target.write_bytes(b"old")
    os.mkfifo(hold)
    code = ("import sys\nfrom rca.io import atomic_open\nwith atomic_open(sys.argv[1]) as f:\n"
            "    f.write(b'new, half written')\n    f.flush()\n    open(sys.argv[2], 'rb').read()\n")
    with open(log, "wb") as out:
        writer = subprocess.Popen([sys.executable, "-c", code, str(target), str(hold)], cwd=REPO, stdout=out,
                                  stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    _kill_at_read(writer, hold, log)  # in the middle of the write
    assert target.read_bytes() == b"old"
    (partial,) = [p for p in target.parent.iterdir() if p != target]
    assert partial.name.startswith(".a.png.") and partial.suffix == ".tmp"
    assert partial.read_bytes() == b"new, half written"
    (target.parent / ".hidden.png").write_bytes(b"not ours")  # hidden, but no .tmp: kept
    assert remove_partial_writes(target.parent) == [partial]  # what the stages call at their start
    assert sorted(p.name for p in target.parent.iterdir()) == [".hidden.png", "a.png"]


# ---- the trainers ----------------------------------------------------------------------------------
def test_train_cls_killed_mid_epoch_resumes_to_the_uninterrupted_weights(voc, classifier, tmp_path):
    """Killed when epoch 1 reads its second batch (after one step of epoch 1, with the memory bank's
    centres of epoch 1 computed), ``--resume`` restarts epoch 1 from epoch 0's checkpoint."""
    root, ids = voc
    args, log = _args(root, tmp_path), tmp_path / "stage.log"
    victim = _epoch_order(ids["train"], 1)[CLS_BATCH]  # first image of epoch 1's second batch
    _kill_after_checkpoint("train_cls", root, args, ids["val"][0], victim, log)
    assert load_checkpoint(tmp_path / "cls" / "last.pt")["done"] == 1

    assert train_cls.main([*args, "--resume"]) == 0
    resumed = load_checkpoint(tmp_path / "cls" / "last.pt")
    straight = load_checkpoint(classifier / "cls" / "last.pt")
    assert resumed["done"] == straight["done"] == 2
    _assert_same_run(resumed, straight)
    assert straight["history"][1]["train_contrast"] > 0  # the redone epoch trained with the memory bank
    for key, state in straight["optimizer"]["state"].items():  # momentum buffers
        assert torch.equal(resumed["optimizer"]["state"][key]["momentum_buffer"], state["momentum_buffer"]), key
    metrics = json.loads((tmp_path / "cls" / "metrics.json").read_text())
    assert metrics["epochs_done"] == 2 and metrics["best_val_map"] == straight["best_score"]


def test_train_seg_killed_mid_epoch_resumes_to_the_uninterrupted_weights(voc, tmp_path):
    """Killed when iteration 4 reads its batch (the last of epoch 0), ``--resume`` continues from the
    checkpoint of iteration 3, mid-epoch, through the epoch boundary to iteration 6."""
    root, ids = voc
    straight_dir = tmp_path / "straight"
    assert train_seg.main(_args(root, straight_dir)) == 0
    args, log = _args(root, tmp_path / "killed"), tmp_path / "stage.log"
    victim = _epoch_order(ids["train"], 0)[3 * SEG_BATCH]  # first image of epoch 0's fourth batch
    _kill_after_checkpoint("train_seg", root, args, ids["val"][0], victim, log)
    assert load_checkpoint(tmp_path / "killed" / "seg" / "last.pt")["done"] == 3
    partial = tmp_path / "killed" / "seg" / ".last.pt.x7f2.tmp"  # as a kill inside a checkpoint write leaves
    partial.write_bytes(b"half a checkpoint")

    assert train_seg.main([*args, "--resume"]) == 0
    assert not partial.exists()
    resumed = load_checkpoint(tmp_path / "killed" / "seg" / "last.pt")
    straight = load_checkpoint(straight_dir / "seg" / "last.pt")
    assert resumed["done"] == straight["done"] == 6
    _assert_same_run(resumed, straight)
    for name, tensor in load_checkpoint(straight_dir / "seg" / "best.pt")["model"].items():
        assert torch.equal(load_checkpoint(tmp_path / "killed" / "seg" / "best.pt")["model"][name], tensor), name


# ---- gen_labels ------------------------------------------------------------------------------------
def _outputs(work_dir: Path) -> dict[str, int]:
    """``{"cams/<id>.npz" or "labels/<id>.png": mtime_ns}`` of the per-image outputs."""
    return {f"{p.parent.name}/{p.name}": p.stat().st_mtime_ns
            for folder, suffix in (("cams", ".npz"), ("labels", ".png")) if (work_dir / folder).is_dir()
            for p in (work_dir / folder).iterdir() if p.suffix == suffix}


def test_gen_labels_killed_in_each_phase_redoes_only_the_missing_images(voc, classifier, tmp_path):
    """Killed at image 5 of the CAMs, then at image 2 of the pseudo labels: each rerun writes the
    missing files only, and the last one ends with the uninterrupted run's CAMs, labels and scores."""
    root, ids = voc
    train, images = ids["train"], root / "JPEGImages"
    extra = ("--checkpoint", str(classifier / "cls" / "best.pt"))
    straight_dir = tmp_path / "straight"
    assert gen_labels.main(_args(root, straight_dir, *extra)) == 0
    work_dir, log = tmp_path / "killed", tmp_path / "stage.log"
    args = _args(root, work_dir, *extra)

    def killed_at(image_id: str) -> dict[str, int]:
        content = _pipe(images / f"{image_id}.jpg")
        try:
            _kill_at_read(_start("gen_labels", args, log), images / f"{image_id}.jpg", log)
        finally:
            _unpipe(images / f"{image_id}.jpg", content)
        assert not (work_dir / "labels" / "metrics.json").exists()
        return _outputs(work_dir)

    cams = [f"cams/{name}.npz" for name in train]
    labels = [f"labels/{name}.png" for name in train]
    after_cams = killed_at(train[5])  # CAMs of images 0-4 are written
    assert sorted(after_cams) == sorted(cams[:5])
    after_labels = killed_at(train[2])  # the other CAMs, then the labels of images 0-1
    assert sorted(after_labels) == sorted(cams + labels[:2])
    assert {k: after_labels[k] for k in after_cams} == after_cams  # the first CAMs were not redone

    partial = [work_dir / "cams" / ".x.npz.k2j4.tmp", work_dir / "labels" / ".x.png.9q1z.tmp"]
    for path in partial:  # as a kill in the middle of a write leaves them
        path.write_bytes(b"half")
    assert gen_labels.main(args) == 0
    assert not any(path.exists() for path in partial)
    final = _outputs(work_dir)
    assert sorted(final) == sorted(cams + labels)
    assert {k for k in final if final[k] != after_labels.get(k)} == set(labels[2:])  # only the missing labels
    for name in train:
        for key, value in load_npz(straight_dir / "cams" / f"{name}.npz").items():
            np.testing.assert_array_equal(load_npz(work_dir / "cams" / f"{name}.npz")[key], value)
        np.testing.assert_array_equal(load_label_png(work_dir / "labels" / f"{name}.png"),
                                      load_label_png(straight_dir / "labels" / f"{name}.png"))
    scores, straight = (json.loads((d / "labels" / "metrics.json").read_text()) for d in (work_dir, straight_dir))
    assert list(scores.pop("timing")) == ["label_images_per_s"] and straight.pop("timing")  # no CAM made
    assert scores == straight


class Killed(BaseException):
    """Stands for a SIGKILL inside a file write (a BaseException: no ``except Exception`` catches it)."""


@pytest.mark.parametrize("stage", ["cls", "seg"])
def test_a_run_killed_in_its_last_metrics_write_is_resumed_not_taken_as_finished(voc, tmp_path, monkeypatch, stage):
    """Killed while writing the last step's ``metrics.json`` (before its ``os.replace``): ``last.pt``
    is written after it, so the rerun redoes that step instead of taking the run as finished and
    leaving the metrics of the step before."""
    module, unit = {"cls": (train_cls, "epochs_done"), "seg": (train_seg, "iterations_done")}[stage]
    args = _args(voc[0], tmp_path)
    real_replace, calls = os.replace, []

    def replace(source, destination):
        if Path(destination).name == "metrics.json":
            calls.append(destination)
            if len(calls) == 2:  # the last of the 2 epochs (cls) or validation intervals (seg)
                raise Killed
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        module.main(args)
    monkeypatch.undo()
    assert module.main([*args, "--resume"]) == 0
    last = load_checkpoint(tmp_path / stage / "last.pt")
    metrics = json.loads((tmp_path / stage / "metrics.json").read_text())
    assert metrics[unit] == last["done"] == {"cls": 2, "seg": 6}[stage]
    assert json.dumps(metrics["history"]) == json.dumps(last["history"])


def test_gen_labels_killed_while_scoring_new_labels_leaves_no_old_scores(voc, classifier, tmp_path, monkeypatch):
    """``--overwrite`` with another threshold rewrites every label and is killed while scoring: the
    rerun scores the new labels instead of reporting the old run's ``metrics.json``."""
    args = _args(voc[0], tmp_path, "--checkpoint", str(classifier / "cls" / "best.pt"))
    assert gen_labels.main(args) == 0
    old = json.loads((tmp_path / "labels" / "metrics.json").read_text())

    def killed(*_):
        raise Killed

    monkeypatch.setattr(gen_labels, "score", killed)
    with pytest.raises(Killed):
        gen_labels.main([*args, "--overwrite", "--set", "labels.bg_threshold=0.3"])
    monkeypatch.undo()
    assert gen_labels.main([*args, "--set", "labels.bg_threshold=0.3"]) == 0
    scores = json.loads((tmp_path / "labels" / "metrics.json").read_text())
    assert scores["protocol"]["threshold"] == 0.3 != old["protocol"]["threshold"]
    assert scores["pseudo_label"] != old["pseudo_label"]  # the labels did change
