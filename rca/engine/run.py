"""Run bookkeeping shared by the trainers: skip a finished run, resume an unfinished one, keep the best.

A trainer writes into one folder ``out_dir``:

* ``last.pt``: the latest state, with what :func:`rca.engine.checkpoint.restore_training_state`
  needs to continue exactly (optimizer, LR scheduler, AMP scaler, RNG states) and the bookkeeping
  below;
* ``best.pt``: the state of the step with the best validation score so far (the last step when the
  run has no validation);
* ``metrics.json``: what the trainer reports of the run so far.

``last.pt`` is written last, after the other two: it is what marks a step done, so a run killed
while writing them has no ``last.pt`` of that step and redoes it on ``--resume`` (it is never taken
as finished with the files of the step before).

Bookkeeping keys every checkpoint carries: ``done`` (epochs or iterations finished), ``best_score``
(best validation score so far, -1 before any) and ``history`` (one record per validated step).

Rules, the same for both trainers: a run whose ``last.pt`` has ``done >= total`` is finished and
skipped; an unfinished one is continued only with ``--resume`` (refused otherwise, so that a
forgotten run is never silently overwritten or extended); ``--overwrite`` starts again; a resume
whose LR schedule length differs from the config's is refused (its poly LR would not match).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from rca.config import save_config
from rca.engine.checkpoint import load_checkpoint, restore_training_state, save_training_state
from rca.engine.logs import tensorboard_writer
from rca.io import remove_partial_writes, save_json
from rca.errors import EXIT_REFUSED, DataError  # EXIT_REFUSED: a stage's status when it refuses a run


def iterations_per_epoch(num_images: int, batch_size: int, world_size: int, split: str, batch_key: str) -> int:
    """Full batches per epoch on each rank (the last, incomplete batch is dropped).

    Raises:
        DataError: the split holds fewer images than one batch on every rank; the message names
            ``split`` and the config key ``batch_key``.
    """
    iterations = num_images // (batch_size * world_size)
    if iterations == 0:
        raise DataError(f"{batch_key}={batch_size} x {world_size} process(es) exceeds the {num_images} usable images "
                        f"of split {split!r}: lower {batch_key} or use a larger split")
    return iterations


class TrainingRun:
    """Where one trainer's run stands on disk, and its best-so-far bookkeeping.

    Args:
        out_dir: the trainer's output folder (``runs/<exp>/cls`` or ``runs/<exp>/seg``).
        total: epochs or iterations the config asks for.
        unit: ``"epochs"`` or ``"iterations"`` (for messages).
        score_key: the history record key ranking checkpoints, higher is better (``"val_map"``).
        log: the stage's logger.

    Attributes:
        done: epochs or iterations finished (0 for a new run).
        best_score: best ``score_key`` so far (-1 before any).
        history: the records passed to :meth:`add`, oldest first.
    """

    def __init__(self, out_dir: str | Path, total: int, unit: str, score_key: str, log: logging.Logger) -> None:
        self.out_dir, self.total, self.unit, self.score_key, self.log = Path(out_dir), total, unit, score_key, log
        self.last_path = self.out_dir / "last.pt"
        self.done, self.best_score, self.history = 0, -1.0, []
        self._unfinished: dict[str, Any] | None = None

    def check(self, resume: bool, overwrite: bool, is_main: bool = True) -> int | None:
        """Decide from ``last.pt`` whether to train: ``None`` to go on, else the stage's exit status.

        Returns 0 (logged as finished) when ``last.pt`` is complete, :data:`EXIT_REFUSED` when it is
        unfinished and ``resume`` is false; ``overwrite`` ignores ``last.pt``. An unfinished run to
        resume is kept for :meth:`restore`. Rank 0 (``is_main``) first deletes the partial files of
        a write that a kill interrupted (:func:`rca.io.remove_partial_writes`).
        """
        if is_main:
            remove_partial_writes(self.out_dir, log=self.log)
        if overwrite or not self.last_path.is_file():
            return None
        state = load_checkpoint(self.last_path, fix="pass --overwrite to train again from the start")
        if state["done"] >= self.total:
            self.log.info("%s is finished (%d %s); --overwrite retrains", self.last_path, self.total, self.unit)
            return 0
        if not resume:
            self.log.error("%s holds an unfinished run: pass --resume to continue or --overwrite", self.last_path)
            return EXIT_REFUSED
        self._unfinished = state
        return None

    def restore(self, model: torch.nn.Module, optimizer, scheduler, scaler, schedule_keys: str,
                training_modules: dict[str, torch.nn.Module] | None = None) -> bool:
        """Load the unfinished run found by :meth:`check` (if any) into the live training objects.

        Args:
            model: the bare model (not the DDP wrapper).
            schedule_keys: the config keys that set the schedule length, named in the refusal.
            training_modules: ``{key: module}`` saved by :meth:`save` into ``last.pt`` only.

        Returns:
            False (and logs why) when the saved LR schedule has another length than ``scheduler``'s.
        """
        state = self._unfinished
        if state is None:
            return True
        saved_total = state["scheduler"]["total_iters"]
        if saved_total != scheduler.total_iters:
            self.log.error("%s was trained with a schedule of %d iterations, this config gives %d (%s changed): "
                           "resume with the same values or pass --overwrite", self.last_path, saved_total,
                           scheduler.total_iters, schedule_keys)
            return False
        restore_training_state(state, model, optimizer, scheduler, scaler, training_modules, self.last_path)
        self.done, self.best_score, self.history = state["done"], state["best_score"], state["history"]
        self.log.info("resumed from %s after %d %s", self.last_path, self.done, self.unit)
        return True

    def open_outputs(self, config, is_main: bool):
        """Write the resolved ``config.yaml`` (rank 0) and return the TensorBoard writer of ``tb/``
        (``None`` on the other ranks)."""
        if is_main:
            save_config(config, self.out_dir / "config.yaml")
        return tensorboard_writer(self.out_dir / "tb", is_main)

    def add(self, record: dict[str, Any], done: int) -> bool:
        """Append a history record for ``done`` finished epochs/iterations; True if it is the best.

        A record without ``score_key`` (no validation) counts as the best: ``best.pt`` is the last.
        """
        self.done = done
        self.history.append(record)
        improved = self.score_key not in record or record[self.score_key] >= self.best_score
        self.best_score = max(self.best_score, record.get(self.score_key, self.best_score))
        return improved

    def best_record(self) -> dict[str, Any]:
        """The history record with the best ``score_key`` (the first one without validation)."""
        return max(self.history, key=lambda r: r.get(self.score_key, -1))

    def save(self, state: dict[str, Any], improved: bool, optimizer, scheduler, scaler, metrics: dict[str, Any],
             training_modules: dict[str, torch.nn.Module] | None = None) -> None:
        """Write ``metrics.json`` (``metrics``), ``best.pt`` when ``improved``, and ``last.pt`` last.

        The checkpoints hold ``state`` plus the bookkeeping; ``training_modules`` (``{key: module}``,
        e.g. loss heads) go into ``last.pt`` only.
        """
        save_json(self.out_dir / "metrics.json", metrics)
        state = {**state, "done": self.done, "best_score": self.best_score, "history": self.history}
        save_training_state(self.out_dir, state, improved, optimizer, scheduler, scaler, training_modules)
