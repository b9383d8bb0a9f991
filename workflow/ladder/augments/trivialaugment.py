"""RandomApply([TrivialAugmentWide(num_magnitude_bins)], p), per image.

As torchvision.transforms.v2.TrivialAugmentWide (Müller and Hutter 2021), but every image draws
its own op: one of 14 (Identity among them) uniformly, its magnitude bin uniformly, negated with
probability 0.5 where the op is signed. Its "wide" magnitudes are torchvision's (shifts up to 32
pixels, rotations up to 135 degrees).
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from ladder.augments.common import coin
from ladder.augments.policy_ops import ID, apply_ops, draw_sign, space


def apply(x: torch.Tensor, s: dict, g: torch.Generator) -> torch.Tensor:
    n, device, bins = len(x), x.device, s["bins"]
    ops, magnitudes, signed = space(v2.TrivialAugmentWide, bins, *x.shape[-2:], device)
    on = coin(n, s["p"], g, device)
    k = torch.randint(len(ops), (n,), generator=g, device=device)
    level = torch.randint(bins, (n,), generator=g, device=device)
    magnitude = draw_sign(magnitudes[k, level], signed[k], g)
    return apply_ops(x, torch.where(on, ops[k], ID["Identity"]), magnitude)
