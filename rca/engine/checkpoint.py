"""Checkpoints written atomically, with the RNG states a resumed run needs."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rca.io import atomic_open


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` into a temporary file, then move it over ``path`` (never a half-written file)."""
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: naming the file and the stage that writes it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found: run the stage that writes it first, or pass --checkpoint"
        )
    return torch.load(path, map_location=map_location, weights_only=False)


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) global RNGs."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(out_dir: str | Path, state: dict[str, Any], improved: bool,
                        optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                        training_modules: dict[str, torch.nn.Module] | None = None) -> None:
    """Write ``out_dir/best.pt`` (``state``, only when ``improved``) and ``out_dir/last.pt``.

    ``last.pt`` adds what :func:`restore_training_state` needs to continue exactly: the
    optimizer, LR scheduler and AMP grad-scaler states, the global RNG states and the state dict of
    each of ``training_modules`` (``{key: module}``: modules only training uses, such as loss heads
    and memory banks, kept out of ``best.pt``).
    """
    out_dir = Path(out_dir)
    if improved:
        save_checkpoint(out_dir / "best.pt", state)
    save_checkpoint(out_dir / "last.pt", {
        **state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(), "rng": rng_state(),
        **{key: module.state_dict() for key, module in (training_modules or {}).items()},
    })


def restore_training_state(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           scheduler: Any, scaler: Any,
                           training_modules: dict[str, torch.nn.Module] | None = None) -> None:
    """Load a ``last.pt`` written by :func:`save_training_state` into the live training objects.

    ``model`` (and each of ``training_modules``) is the unwrapped module (not the DDP wrapper).
    Also restores the global RNG states.

    Raises:
        KeyError: a key of ``training_modules`` is missing from ``state`` (saved without it).
    """
    model.load_state_dict(state["model"])
    for key, module in (training_modules or {}).items():
        module.load_state_dict(state[key])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
