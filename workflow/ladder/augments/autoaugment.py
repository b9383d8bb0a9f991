"""RandomApply([AutoAugment(policy)], p), per image.

As torchvision.transforms.v2.AutoAugment (Cubuk et al. 2019), but every image draws its own
sub-policy: one of the policy's 25 uniformly, then each of its two ops applied with the op's
probability at the op's magnitude bin (of 10), negated with probability 0.5 where the op is
signed. The policies (imagenet, cifar10, svhn) are torchvision's own tables.
"""

from __future__ import annotations

import functools

import torch
from torchvision.transforms import v2

from ladder.augments.common import coin
from ladder.augments.policy_ops import ID, apply_ops, draw_sign, space

BINS = 10  # AutoAugment's magnitude levels


def subpolicies(policy: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A policy's sub-policies as (25, 2) op ids, probabilities and magnitude bins (0 where the
    op has none)."""
    table = v2.AutoAugment(v2.AutoAugmentPolicy(policy))._policies
    ops = torch.tensor([[ID[name] for name, _, _ in steps] for steps in table])
    probability = torch.tensor([[p for _, p, _ in steps] for steps in table])
    level = torch.tensor([[b or 0 for _, _, b in steps] for steps in table])
    return ops, probability, level


@functools.cache  # built once per setting and device, not every training step
def tables(policy: str, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(sub-policies' op ids, probabilities, magnitude bins) and, indexed by op id, each op's
    magnitudes (10 bins) and whether it is signed, on `device`."""
    ids, magnitudes, signed = space(v2.AutoAugment, BINS, height, width, torch.device("cpu"))
    by_id = torch.zeros(len(ID), BINS), torch.zeros(len(ID), dtype=torch.bool)
    by_id[0][ids], by_id[1][ids] = magnitudes, signed
    return tuple(t.to(device) for t in (*subpolicies(policy), *by_id))


def apply(x: torch.Tensor, s: dict, g: torch.Generator) -> torch.Tensor:
    n, device = len(x), x.device
    ops, probability, level, magnitudes, signed = tables(s["policy"], *x.shape[-2:], device)
    on = coin(n, s["p"], g, device)
    chosen = torch.randint(len(ops), (n,), generator=g, device=device)
    for step in range(2):
        op, bin_ = ops[chosen, step], level[chosen, step]
        applied = torch.rand(n, generator=g, device=device) <= probability[chosen, step]
        magnitude = draw_sign(magnitudes[op, bin_], signed[op], g)
        x = apply_ops(x, torch.where(on & applied, op, ID["Identity"]), magnitude)
    return x
