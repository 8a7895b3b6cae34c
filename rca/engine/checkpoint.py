"""Checkpoints written atomically, with the RNG states a resumed run needs, read back safely.

A checkpoint is a dict of tensors and plain Python values (numbers, strings, lists, tuples, dicts,
``None``) and nothing else, so :func:`load_checkpoint` reads it with ``torch.load(weights_only=True)``,
which runs no pickled code: a file from elsewhere can at worst fail to load. A model checkpoint
(``best.pt``, ``last.pt``) carries ``kind`` (a key of :data:`CHECKPOINT_KINDS`), ``model_args`` (the
architecture: the keyword arguments of the model's builder, backbone included) and ``model`` (its
state dict); a stage that reads one names the kind it needs, and a checkpoint of another kind, or a
file that is not a checkpoint, stops it with one line saying which checkpoint it needs
(:class:`rca.errors.CheckpointError`).
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rca.errors import CheckpointError
from rca.io import atomic_open

CHECKPOINT_KINDS = {
    "classifier": "stages/train_cls.py (runs/<exp>/cls/best.pt)",
    "segmentation": "stages/train_seg.py (runs/<exp>/seg/best.pt)",
}
"""Checkpoint kind -> the stage that writes it (and where)."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` into a temporary file, then move it over ``path`` (never a half-written file)."""
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", kind: str | None = None,
                    fix: str | None = None) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with ``torch.load(weights_only=True)``.

    Args:
        path: the file.
        map_location: where tensors go (``torch.load``'s argument).
        kind: the :data:`CHECKPOINT_KINDS` key the caller needs; ``None`` accepts any checkpoint.
        fix: what the message of an unreadable file tells the user to do (default: give a checkpoint
            of ``kind``, naming the stage that writes it).

    Raises:
        FileNotFoundError: no such file (the message names it and the stage that writes it).
        CheckpointError: the file is corrupt, is not a checkpoint of this project (or holds pickled
            objects a safe load refuses), or is of another kind than ``kind``; the message names the
            file, the kind found and the stage that writes the kind needed.
    """
    path = Path(path)
    writer = CHECKPOINT_KINDS[kind] if kind else "the stage that writes it"
    wanted = f"a {kind} checkpoint, as written by {writer}" if kind else "a checkpoint of this project"
    fix = fix or f"give {wanted}"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: pass --checkpoint, or run {writer} first")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a truncated zip, a text file, pickled objects: every failure means the same
        raise CheckpointError(f"cannot read checkpoint {path}: {_load_failure(error)}; {fix}") from error
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a model checkpoint (it has no 'model' entry); {fix}")
    if kind is not None and state.get("kind") != kind:
        found = state.get("kind")
        what = (f"a {found} checkpoint (backbone {state.get('model_args', {}).get('backbone')}, written by "
                f"{CHECKPOINT_KINDS[found].split(' ')[0]})" if found in CHECKPOINT_KINDS
                else "a checkpoint without a known kind (written by other code, or before checkpoints recorded it)")
        raise CheckpointError(f"{path} is {what}, but this stage needs {wanted}")
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | Path, fix: str) -> None:
    """``model.load_state_dict(state["model"])``, with a one-line error when the weights do not fit.

    A checkpoint written by another version of the project can name parameters this code no longer
    builds (for example the two 1x1 layers RCA's fine head had before it became one convolution).

    Raises:
        CheckpointError: missing, unexpected or mis-shaped entries; the message names ``path``, up
            to three of the entries, and says what to do (``fix``).
    """
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        names = re.findall(r'"([\w.]+)"', str(error))
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise CheckpointError(f"{path} does not fit the model this code builds from its model_args "
                              f"(entries {shown or 'of other shapes'}): it was written by another "
                              f"version of the project; {fix}") from error


def _load_failure(error: Exception) -> str:
    """Why ``torch.load`` failed, in a few words (torch's own messages run over many lines)."""
    text = " ".join(str(error).split())
    if found := re.search(r"Unsupported global: GLOBAL ([\w.]+)", text):
        return (f"it holds pickled Python objects ({found.group(1)}), which a safe load (weights_only=True) "
                f"refuses: it was written by other code, or by this project before its checkpoints were safe to load")
    cause = "the file is truncated, corrupt or not a torch checkpoint"
    if isinstance(error, pickle.UnpicklingError):  # torch's text says nothing more useful here
        return cause
    return f"{cause} ({type(error).__name__}: {text.split('. ')[0][:200]})"


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) global RNGs, in plain values and
    tensors only (NumPy's MT19937 key as a list of ints), so a weights-only load reads them."""
    name, key, position, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {"python": random.getstate(), "numpy": [name, key.tolist(), position, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    name, key, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), position, has_gauss, gauss))
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
                           training_modules: dict[str, torch.nn.Module] | None = None,
                           path: str | Path = "last.pt") -> None:
    """Load a ``last.pt`` written by :func:`save_training_state` into the live training objects.

    ``model`` (and each of ``training_modules``) is the unwrapped module (not the DDP wrapper).
    Also restores the global RNG states. ``path`` names the file in errors.

    Raises:
        KeyError: a key of ``training_modules`` is missing from ``state`` (saved without it).
        CheckpointError: the model weights do not fit ``model`` (:func:`load_model_state`).
    """
    load_model_state(model, state, path, fix="pass --overwrite to train again from the start")
    for key, module in (training_modules or {}).items():
        module.load_state_dict(state[key])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
