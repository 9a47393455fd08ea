"""Optimizer and learning-rate scheduler registries, selected by name from the bundle configs."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, lr, weight_decay: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
    "adamw": lambda params, lr, weight_decay: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
    "sgd": lambda params, lr, weight_decay: torch.optim.SGD(
        params, lr=lr, momentum=0.99, nesterov=True, weight_decay=weight_decay
    ),
}
SCHEDULERS = ("cosine", "plateau", "constant")


def build_optimizer(name: str, params: Iterable, lr: float, weight_decay: float = 1e-5) -> torch.optim.Optimizer:
    """Build an optimizer by name: ``adam``, ``adamw`` or ``sgd`` (nesterov, momentum 0.99)."""
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; set optimizer to one of: {', '.join(sorted(OPTIMIZERS))}.")
    return OPTIMIZERS[key](params, float(lr), float(weight_decay))


def build_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    max_epochs: int,
    warmup_epochs: int = 0,
    patience: int = 5,
    factor: float = 0.5,
    min_lr: float = 1e-6,
):
    """Build an epoch-level scheduler.

    ``cosine`` anneals to ``min_lr`` over ``max_epochs`` (after a linear warm-up of ``warmup_epochs``);
    ``plateau`` is ReduceLROnPlateau on the validation key metric (mode ``max``); ``constant`` keeps the LR.
    """
    key = name.lower()
    if key == "cosine":
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, int(max_epochs) - int(warmup_epochs)), eta_min=min_lr
        )
        if warmup_epochs <= 0:
            return cosine
        warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=int(warmup_epochs))
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, cosine], milestones=[int(warmup_epochs)])
    if key == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=factor, patience=patience, min_lr=min_lr
        )
    if key == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    raise ValueError(f"unknown scheduler {name!r}; set scheduler to one of: {', '.join(SCHEDULERS)}.")


def scheduler_step_input(scheduler, evaluator, key_metric: str) -> Callable:
    """The ``step_transform`` for MONAI's ``LrScheduleHandler``: plateau steps on the last validation metric."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return lambda engine: (evaluator.state.metrics.get(key_metric, 0.0),)
    return lambda engine: ()
