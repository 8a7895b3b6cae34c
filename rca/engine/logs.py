"""Console/file logging, TensorBoard and peak-memory readings, on the main process only."""

from __future__ import annotations

import logging
import resource
import sys
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter


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
