"""The optimisation step both trainers share: poly LR, AMP grad scaling, one SGD update, and the
stop on a non-finite loss.

Poly LR (DeepLab-v2, Chen et al., TPAMI 2018, arXiv:1606.00915, Sec. 4.1; used by PSA, IRN and RCA
for the classifier too): ``lr_t = lr_0 (1 - t / T) ** 0.9``, stepped once per iteration.
"""

from __future__ import annotations

import math

import torch

from rca.errors import NonFiniteLossError

POLY_POWER = 0.9


def poly_scheduler(optimizer: torch.optim.Optimizer, total_iters: int) -> torch.optim.lr_scheduler.PolynomialLR:
    """Poly LR over ``total_iters`` iterations (power 0.9); every param group decays from its own LR."""
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total_iters, power=POLY_POWER)


def grad_scaler(amp: bool, device: torch.device) -> torch.amp.GradScaler:
    """An AMP grad scaler, enabled only when ``amp`` is asked for and ``device`` is a GPU."""
    return torch.amp.GradScaler(device.type, enabled=use_amp(amp, device))


def use_amp(amp: bool, device: torch.device) -> bool:
    """Mixed precision runs only on a GPU (the config's ``amp`` is ignored on the CPU)."""
    return amp and device.type == "cuda"


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler, scaler) -> None:
    """Backward pass of ``loss`` (scaled under AMP), one optimizer step, one LR-scheduler step."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()


def check_finite(losses: dict[str, float], where: str, lr_key: str) -> None:
    """Stop training when a loss of this step is NaN or infinite.

    Called before anything of the step is saved, so the checkpoints on disk stay the last good ones.

    Args:
        losses: name -> value of this step's loss terms and of the total, ``"loss"``, which is named
            only when every other term is finite (then its part not logged apart, e.g. the
            segmentation cross-entropy, went non-finite).
        where: the step, for the message (``"epoch 3, iteration 12/40"``).
        lr_key: the config key of the learning rate, for the advice.

    Raises:
        NonFiniteLossError: naming the term, its value and ``where``.
    """
    terms = {name: value for name, value in losses.items() if name != "loss"}
    bad = next((f"loss term {name!r} is {value}" for name, value in terms.items() if not math.isfinite(value)), None)
    if bad is None and not math.isfinite(losses.get("loss", 0.0)):
        bad = f"the loss is {losses['loss']}" + (f" (its terms {', '.join(terms)} are finite)" if terms else "")
    if bad is not None:
        raise NonFiniteLossError(f"{bad} at {where}: training stopped, and the checkpoints on disk are from before "
                                 f"this step; lower {lr_key} or check the data, then rerun with --overwrite")
