"""Learning-rate schedules: our factory gives exactly torch's sequences for the same settings."""

from __future__ import annotations

import itertools

import pytest
import torch
from ladder import optim
from ladder.config import Params
from torch.optim import lr_scheduler


def resolved(**train) -> dict:
    return Params.from_dict({"experiments": {"x": train}}).experiments["x"].train


def opt(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def ours(train: dict, steps_per_epoch: int = 3, val=None) -> list[float]:
    o = opt(train["optimizer"]["lr"])
    s = optim.Schedule(o, train["schedule"], train["epochs"], steps_per_epoch)
    lrs = []
    for epoch in range(train["epochs"]):
        for _ in range(steps_per_epoch):
            lrs.append(o.param_groups[0]["lr"])
            o.step()
            s.after_step()
        s.after_epoch(val[epoch] if val else 0.0)
    return lrs


def torchs(
    make, epochs: int, steps_per_epoch: int = 3, per_step: bool = False, val=None
) -> list[float]:
    o = opt()
    sched = make(o)
    lrs = []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            lrs.append(o.param_groups[0]["lr"])
            o.step()
            if per_step:
                sched.step()
        if not per_step:
            sched.step(val[epoch]) if val else sched.step()
    return lrs


CASES = {
    "cosine": (
        {"schedule": {"name": "cosine", "t_max": 10}, "epochs": 12},
        lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=10),
        False,
    ),
    "multistep": (
        {"schedule": {"name": "multistep", "milestones": [3, 5], "gamma": 0.5}, "epochs": 8},
        lambda o: lr_scheduler.MultiStepLR(o, milestones=[3, 5], gamma=0.5),
        False,
    ),
    "constant": (
        {"epochs": 4},
        lambda o: lr_scheduler.ConstantLR(o, factor=1.0, total_iters=0),
        False,
    ),
    "onecycle": (
        {"schedule": {"name": "onecycle", "pct_start": 0.3}, "epochs": 5},
        lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=15, pct_start=0.3),
        True,
    ),
    "warmup_cosine": (
        {
            "schedule": {"name": "cosine", "t_max": 6, "warmup_epochs": 2, "warmup_start": 0.2},
            "epochs": 8,
        },
        lambda o: lr_scheduler.SequentialLR(
            o,
            [
                lr_scheduler.LinearLR(o, 0.2, 1.0, total_iters=2),
                lr_scheduler.CosineAnnealingLR(o, T_max=6),
            ],
            milestones=[2],
        ),
        False,
    ),
    "warmup_linear_to_zero": (
        {"schedule": {"name": "linear", "warmup_epochs": 1, "warmup_start": 0.1}, "epochs": 4},
        lambda o: lr_scheduler.SequentialLR(
            o,
            [
                lr_scheduler.LinearLR(o, 0.1, 1.0, total_iters=3),
                lr_scheduler.LinearLR(o, 1.0, 0.0, total_iters=9),
            ],
            milestones=[3],
        ),
        True,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_schedule_equals_torch(case):
    train, make, per_step = CASES[case]
    train = resolved(optimizer={"lr": 0.1}, **train)
    assert ours(train) == pytest.approx(
        torchs(make, train["epochs"], per_step=per_step), rel=1e-12, abs=1e-15
    )


def test_plateau_follows_val_accuracy():
    train = resolved(
        optimizer={"lr": 0.1}, schedule={"name": "plateau", "factor": 0.1, "patience": 1}, epochs=6
    )
    val = [0.1, 0.2, 0.2, 0.2, 0.3, 0.3]
    expected = torchs(
        lambda o: lr_scheduler.ReduceLROnPlateau(o, mode="max", factor=0.1, patience=1), 6, val=val
    )
    assert ours(train, val=val) == pytest.approx(expected)
    assert min(expected) < 0.1  # it did reduce


def test_linear_reaches_zero_at_the_last_step():
    train = resolved(optimizer={"lr": 0.1}, schedule={"name": "linear"}, epochs=3)
    lrs = ours(train, steps_per_epoch=4)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(0.1 / 12)
    assert all(a > b for a, b in itertools.pairwise(lrs))


def test_optimizer_settings_reach_torch():
    t = resolved(
        optimizer={
            "name": "sgd",
            "lr": 0.3,
            "momentum": 0.8,
            "weight_decay": 0.01,
            "nesterov": True,
        }
    )
    o = optim.optimizer([torch.nn.Parameter(torch.zeros(1))], t["optimizer"], torch.device("cpu"))
    g = o.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"], g["nesterov"]) == (0.3, 0.8, 0.01, True)
    a = resolved(
        optimizer={"name": "adamw", "lr": 0.001, "betas": [0.8, 0.99], "weight_decay": 0.05}
    )
    o = optim.optimizer([torch.nn.Parameter(torch.zeros(1))], a["optimizer"], torch.device("cpu"))
    assert isinstance(o, torch.optim.AdamW)
    assert o.param_groups[0]["betas"] == (0.8, 0.99)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
@pytest.mark.parametrize("decay_all", [True, False])
def test_decay_norms_and_biases_decides_which_tensors_decay(name, decay_all):
    # A step with zero gradients moves a parameter by its weight decay alone.
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    torch.nn.init.constant_(model[1].bias, 0.5)  # zero would not move under decay either
    decay = {"weight_decay": 0.5, "decay_norms_and_biases": decay_all}
    settings = resolved(optimizer={"name": name, "lr": 0.1, **decay})["optimizer"]
    o = optim.optimizer(model.parameters(), settings, torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    o.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    one_dim = {"0.bias", "1.weight", "1.bias"}
    assert moved == ({"0.weight"} | one_dim if decay_all else {"0.weight"})


def test_decay_norms_and_biases_applies_to_optimisers_that_decay():
    assert "decay_norms_and_biases" in resolved(optimizer={"name": "adamw"})["optimizer"]
    assert resolved()["optimizer"]["decay_norms_and_biases"] is True  # as the seed trained
