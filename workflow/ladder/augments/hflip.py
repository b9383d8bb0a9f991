"""RandomHorizontalFlip, per image."""

from __future__ import annotations

import torch

from ladder.augments.common import coin


def hflip(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """RandomHorizontalFlip(p)."""
    flip = coin(len(x), p, g, x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def apply(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    return hflip(x, p, g)
