"""Known answers for the pieces stage 2 and the trainers share: class numberings, the rule taken from
the config, the run bookkeeping, the worker pool."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rca.config import LabelsConfig
from rca.data.label_space import LabelSpace, compact_lookup
from rca.engine.pool import WorkerPool
from rca.engine.run import EXIT_REFUSED, TrainingRun
from rca.engine.seeding import SeededItems, seeded_indices
from rca.labelling import LabelRule, label_rule, seed_crf_preset

VOC_LIKE = LabelSpace(("background", "cat", "dog", "car"), has_background=True)
NO_BACKGROUND = LabelSpace(("sky", "road", "car"), has_background=False)


def test_label_space_converts_tags_and_labels():
    assert (VOC_LIKE.num_classes, VOC_LIKE.num_tags, VOC_LIKE.tag_names) == (4, 3, ["cat", "dog", "car"])
    assert VOC_LIKE.tag_to_label([0, 2]).tolist() == [1, 3]
    assert NO_BACKGROUND.tag_to_label([0, 2]).tolist() == [0, 2]
    mask = np.array([[0, 2, 255], [2, 0, 0]])
    assert VOC_LIKE.tags_of_mask(mask).tolist() == [0, 1, 0]  # background and 255 give no tag
    assert NO_BACKGROUND.tags_of_mask(mask).tolist() == [1, 0, 1]


def test_compact_lookup_maps_stack_channels_to_label_values():
    classes = np.array([3, 7])
    assert compact_lookup(classes, with_background=True).tolist() == [0, 3, 7]
    assert compact_lookup(classes, with_background=False).tolist() == [3, 7]
    argmax = np.array([[0, 2], [1, 0]])
    assert compact_lookup(classes, True)[argmax].tolist() == [[0, 7], [3, 0]]


def test_label_rule_from_config():
    rule = label_rule(LabelsConfig(rule="constant", bg_threshold=0.2, crf="deeplab"), has_background=True)
    assert rule == LabelRule("constant", {"threshold": 0.2}, "deeplab", None)
    assert label_rule(LabelsConfig(rule="confident", crf="irn"), True).params == {"fg_threshold": 0.30,
                                                                                   "bg_threshold": 0.05}
    assert label_rule(LabelsConfig(rule="power"), has_background=False).name == "argmax"  # no background class
    assert label_rule(LabelsConfig(crf="none"), True).crf == "none"
    for bad, message in [(dict(crf="dense"), "labels.crf must be"), (dict(rule="otsu"), "labels.rule must be"),
                         (dict(rule="saliency"), "saliency_dir"), (dict(rule="constant", crf="irn"), "crf=irn"),
                         (dict(rule="confident", crf="psa"), "irn or none")]:
        with pytest.raises(ValueError, match=message):
            label_rule(LabelsConfig(**bad), True)
    assert (seed_crf_preset("deeplab"), seed_crf_preset("irn"), seed_crf_preset("none")) == ("deeplab", "psa", "psa")


def test_label_rule_applies_its_crf_only_when_named():
    """A CAM step at column 4: kept without CRF and by the CRF on an image with an edge there; on a flat
    image the CRF (and only the CRF) smooths it away."""
    cams = np.zeros((1, 8, 8), np.float32)
    cams[0, :, 4:] = 0.9
    flat, edge = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)
    edge[:, 4:] = 255
    expected = np.where(np.arange(8) >= 4, 5, 0)[None].repeat(8, axis=0)

    def label(crf: str, image: np.ndarray) -> np.ndarray:
        return LabelRule("constant", {"threshold": 0.3}, crf).apply(cams, np.array([5]), image, "id")

    np.testing.assert_array_equal(label("none", flat), expected)
    np.testing.assert_array_equal(label("psa", edge), expected)
    assert not np.array_equal(label("psa", flat), expected)


def test_training_run_keeps_the_best_and_refuses_or_skips(tmp_path):
    log = logging.getLogger("test")
    run = TrainingRun(tmp_path, total=3, unit="epochs", score_key="val", log=log)
    assert run.check(resume=False, overwrite=False) is None  # nothing on disk: train
    assert [run.add({"val": v}, done=i + 1) for i, v in enumerate([1.0, 3.0, 2.0])] == [True, True, False]
    assert run.best_score == 3.0 and run.best_record() == {"val": 3.0}
    assert TrainingRun(tmp_path, 1, "iterations", "val", log).add({"loss": 0.5}, 1)  # no val: the last is best

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=6)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    unfinished = TrainingRun(tmp_path, total=3, unit="epochs", score_key="val", log=log)
    unfinished.add({"val": 1.0}, done=1)
    unfinished.save({"model": model.state_dict()}, True, optimizer, scheduler, scaler, {"epochs_done": 1})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"epochs_done": 1}
    again = TrainingRun(tmp_path, total=3, unit="epochs", score_key="val", log=log)
    assert again.check(resume=False, overwrite=False) == EXIT_REFUSED
    assert again.check(resume=True, overwrite=False) is None
    other = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=9)
    assert not again.restore(model, optimizer, other, scaler, "epochs")  # another schedule length
    assert again.restore(model, optimizer, scheduler, scaler, "epochs")
    assert (again.done, again.best_score, again.history) == (1, 1.0, [{"val": 1.0}])
    assert TrainingRun(tmp_path, total=1, unit="epochs", score_key="val", log=log).check(False, False) == 0


class _Squares:
    """A pool context that logs the id of every process it is unpickled in (each worker, once)."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")

    def square(self, x: int) -> int:
        return x * x


def test_worker_pool_maps_methods_in_order_on_processes_started_once(tmp_path):
    for workers in (1, 2):
        log = tmp_path / f"workers_{workers}.txt"
        with WorkerPool(_Squares(log), workers) as pool:
            pool.start()
            for _ in range(2):  # two phases of one run (gen_labels: pseudo labels, then scores)
                assert pool.map("square", range(7), "test") == [x * x for x in range(7)]
        started = log.read_text().split() if log.exists() else []
        assert len(started) == (workers if workers > 1 else 0)  # no process per phase
        assert str(os.getpid()) not in started


class _Noise:
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(3) + index


def test_seeded_items_depend_only_on_their_key():
    items = SeededItems(_Noise())
    keys = seeded_indices([2, 0, 3], seed=5, epoch=1)
    assert [k[0] for k in keys] == [2, 0, 3] and len({k[1] for k in keys}) == 3
    state = torch.get_rng_state()
    first = [items[k] for k in keys]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    torch.rand(10)
    assert all(torch.equal(items[k], x) for k, x in zip(reversed(keys), reversed(first)))
    assert not torch.equal(items[seeded_indices([2], 5, 2)[0]], first[0])  # another epoch, another draw
