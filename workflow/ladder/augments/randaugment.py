"""RandomApply([RandAugment(num_ops, magnitude, num_magnitude_bins)], p), per image.

As torchvision.transforms.v2.RandAugment (Cubuk et al. 2020), but every image draws its own ops:
`ops` times, an op uniformly from its 14 (Identity among them) at the fixed magnitude bin, negated
with probability 0.5 where the op is signed.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from ladder.augments.common import coin
from ladder.augments.policy_ops import ID, apply_ops, draw_sign, space


def apply(x: torch.Tensor, s: dict, g: torch.Generator) -> torch.Tensor:
    n, device = len(x), x.device
    ops, magnitudes, signed = space(v2.RandAugment, s["bins"], *x.shape[-2:], device)
    on = coin(n, s["p"], g, device)
    for _ in range(s["ops"]):
        k = torch.randint(len(ops), (n,), generator=g, device=device)
        magnitude = draw_sign(magnitudes[k, s["magnitude"]], signed[k], g)
        x = apply_ops(x, torch.where(on, ops[k], ID["Identity"]), magnitude)
    return x
