"""RandomApply([RandomAffine(degrees=d)], p), per image."""

from __future__ import annotations

import torch

from ladder.augments.affine import affine
from ladder.augments.common import coin


def rotate_params(n: int, p: float, degrees: float, g: torch.Generator, device) -> torch.Tensor:
    """Per image angle ~ U(-d, d), else zero."""
    drawn = (torch.rand(n, generator=g, device=device) * 2 - 1) * degrees
    return torch.where(coin(n, p, g, device), drawn, 0.0)


def apply(x: torch.Tensor, s: dict, g: torch.Generator) -> torch.Tensor:
    n = len(x)
    angle = rotate_params(n, s["p"], s["degrees"], g, x.device)
    return affine(x, angle, torch.zeros(n, 2, device=x.device))
