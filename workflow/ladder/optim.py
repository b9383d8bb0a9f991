"""Optimisers and learning-rate schedules from an experiment's settings, with torch's own classes.

constant, cosine, multistep and plateau step once per epoch, as in the seed; linear (to zero) and
onecycle step after every optimiser step. A warm-up runs before the schedule, which then starts
counting its epochs (T_max, milestones) from the end of the warm-up.
"""

from __future__ import annotations

import torch
from torch.optim import lr_scheduler

PER_STEP = {"linear", "onecycle"}


def param_groups(parameters, settings: dict) -> list[dict]:
    """One group, or, where `decay_norms_and_biases` is off, the tensors of one dimension
    (normalisation weights, biases) in a group of their own without weight decay."""
    params = list(parameters)
    if settings["decay_norms_and_biases"]:
        return [{"params": params}]
    groups = [
        {"params": [p for p in params if p.ndim > 1]},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def optimizer(parameters, settings: dict, device: torch.device) -> torch.optim.Optimizer:
    # Fused kernels on CUDA: one launch per step instead of one per parameter tensor.
    fused = {"fused": True} if torch.device(device).type == "cuda" else {}
    parameters = param_groups(parameters, settings)
    if settings["name"] == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=settings["lr"],
            momentum=settings["momentum"],
            nesterov=settings["nesterov"],
            weight_decay=settings["weight_decay"],
            **fused,
        )
    if settings["name"] == "adamw":
        return torch.optim.AdamW(
            parameters,
            lr=settings["lr"],
            betas=tuple(settings["betas"]),
            weight_decay=settings["weight_decay"],
            **fused,
        )
    raise ValueError(f"optimizer.name: unknown optimiser {settings['name']!r}")


class Schedule:
    """A torch scheduler and when to step it (per epoch or per optimiser step)."""

    def __init__(
        self, opt: torch.optim.Optimizer, settings: dict, epochs: int, steps_per_epoch: int
    ):
        self.name = settings["name"]
        self.per_step = self.name in PER_STEP
        unit = steps_per_epoch if self.per_step else 1
        total = epochs * unit
        warmup = settings.get("warmup_epochs", 0) * unit
        if self.name == "onecycle":
            main = lr_scheduler.OneCycleLR(
                opt,
                max_lr=[g["lr"] for g in opt.param_groups],
                total_steps=total,
                pct_start=settings["pct_start"],
            )
        elif self.name == "plateau":
            main = lr_scheduler.ReduceLROnPlateau(
                opt, mode="max", factor=settings["factor"], patience=settings["patience"]
            )
        elif self.name == "cosine":
            main = lr_scheduler.CosineAnnealingLR(
                opt, T_max=settings["t_max"], eta_min=settings["eta_min"]
            )
        elif self.name == "multistep":
            main = lr_scheduler.MultiStepLR(
                opt, milestones=settings["milestones"], gamma=settings["gamma"]
            )
        elif self.name == "linear":
            main = lr_scheduler.LinearLR(
                opt, start_factor=1.0, end_factor=0.0, total_iters=total - warmup
            )
        elif self.name == "constant":
            main = lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
        else:
            raise ValueError(f"schedule.name: unknown schedule {self.name!r}")
        if warmup:
            ramp = lr_scheduler.LinearLR(
                opt, start_factor=settings["warmup_start"], end_factor=1.0, total_iters=warmup
            )
            main = lr_scheduler.SequentialLR(opt, [ramp, main], milestones=[warmup])
        self.scheduler = main

    def after_step(self) -> None:
        if self.per_step:
            self.scheduler.step()

    def after_epoch(self, val_acc: float) -> None:
        if self.name == "plateau":
            self.scheduler.step(val_acc)
        elif not self.per_step:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def current_lr(opt: torch.optim.Optimizer) -> float:
    return float(opt.param_groups[0]["lr"])
