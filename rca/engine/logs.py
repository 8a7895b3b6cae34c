"""Console/file logging, training progress, TensorBoard and peak-memory readings, on the main process only."""

from __future__ import annotations

import datetime
import logging
import resource
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


def setup_logger(name: str, log_file: Path | None, is_main: bool) -> logging.Logger:
    """A logger printing to stdout (and appending to ``log_file``) on rank 0, silent elsewhere."""
    logger = logging.getLogger(name)
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    formatter = logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if is_main and log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


def tensorboard_writer(log_dir: Path, is_main: bool) -> SummaryWriter | None:
    """A TensorBoard ``SummaryWriter`` on rank 0, ``None`` on the other ranks."""
    return SummaryWriter(str(log_dir)) if is_main else None


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA allocator peak on a GPU, peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def format_step(iteration: int, total: int, losses: Mapping[str, float], lr: float, s_per_iter: float,
                peak_mb: float) -> str:
    """One short console line about training, like torchvision's references print.

    Example: ``iter 120/3000  loss 0.5120  cls 0.4100  contrast 0.1020  lr 9.60e-03  0.450 s/iter
    eta 0:21:36  peak 1126 MiB`` (ETA = remaining iterations x ``s_per_iter``, whole seconds).
    """
    terms = "  ".join(f"{name} {value:.4f}" for name, value in losses.items())
    eta = datetime.timedelta(seconds=round(max(total - iteration, 0) * s_per_iter))
    return (f"iter {iteration}/{total}  {terms}  lr {lr:.2e}  {s_per_iter:.3f} s/iter  eta {eta}  "
            f"peak {peak_mb:.0f} MiB")


class TrainingProgress:
    """A progress bar over a whole training run plus a :func:`format_step` log line every ``interval`` steps.

    The bar counts iterations of the whole run (all epochs), so its ETA is the run's; its postfix shows
    the current loss. While open, the console handlers of ``log`` write through tqdm
    (``tqdm.contrib.logging.logging_redirect_tqdm``), so log lines and the bar do not garble each other.
    Use as a context manager; on ranks other than 0 pass ``enabled=False`` (nothing is shown or logged).

    Args:
        log: the stage's logger (see :func:`setup_logger`).
        total: iterations of the whole run.
        done: iterations already done (a resume starts the bar there).
        interval: log a line every ``interval`` iterations (``cls.log_interval`` / ``seg.log_interval``).
        device: where peak memory is read (:func:`peak_memory_mb`).
        desc: the bar's label.
        enabled: False on ranks other than 0.
    """

    def __init__(self, log: logging.Logger, total: int, done: int, interval: int, device: torch.device,
                 desc: str, enabled: bool = True) -> None:
        self.log, self.total, self.iteration, self.interval = log, total, done, max(1, interval)
        self.device, self.desc, self.enabled = device, desc, enabled

    def __enter__(self) -> TrainingProgress:
        self._redirect = logging_redirect_tqdm([self.log])
        self._redirect.__enter__()
        self.bar = tqdm(total=self.total, initial=self.iteration, desc=self.desc, disable=not self.enabled,
                        dynamic_ncols=True)
        self._since, self._steps = time.perf_counter(), 0
        return self

    def step(self, losses: Mapping[str, float], lr: float) -> None:
        """Count one iteration; ``losses`` are its loss terms (the first one is shown on the bar)."""
        self.iteration += 1
        self._steps += 1
        name, value = next(iter(losses.items()))
        self.bar.set_postfix({name: f"{value:.4f}"}, refresh=False)
        self.bar.update()
        if self.enabled and self.iteration % self.interval == 0:
            s_per_iter = (time.perf_counter() - self._since) / self._steps
            self.log.info(format_step(self.iteration, self.total, losses, lr, s_per_iter, peak_memory_mb(self.device)))
            self._since, self._steps = time.perf_counter(), 0

    def __exit__(self, *exc) -> None:
        self.bar.close()
        self._redirect.__exit__(*exc)
