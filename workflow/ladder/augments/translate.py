"""RandomApply([RandomAffine(degrees=0, translate=(m, m))], p), per image."""

from __future__ import annotations

import torch

from ladder.augments.affine import affine
from ladder.augments.common import coin


def translate_params(
    n: int, size: int, p: float, max_fraction: float, g: torch.Generator, device
) -> torch.Tensor:
    """Per image (tx, ty) in whole pixels, each round(U(-m * size, m * size)); zero where not
    applied."""
    bound = max_fraction * size
    drawn = torch.round((torch.rand(n, 2, generator=g, device=device) * 2 - 1) * bound)
    return torch.where(coin(n, p, g, device)[:, None], drawn, 0.0)


def apply(x: torch.Tensor, s: dict, g: torch.Generator) -> torch.Tensor:
    n = len(x)
    shift = translate_params(n, x.shape[-1], s["p"], s["max"], g, x.device)
    return affine(x, torch.zeros(n, device=x.device), shift)
