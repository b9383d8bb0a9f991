"""RandomSolarize(threshold, p) on [0, 1] images, per image."""

from __future__ import annotations

import torch

from ladder.augments.common import coin


def solarize(x: torch.Tensor, p: float, threshold: float, g: torch.Generator) -> torch.Tensor:
    """Invert the pixels >= threshold of the images it touches."""
    on = coin(len(x), p, g, x.device)[:, None, None, None]
    return torch.where(on & (x >= threshold), 1.0 - x, x)


def apply(x: torch.Tensor, s: dict, g: torch.Generator) -> torch.Tensor:
    return solarize(x, s["p"], s["threshold"], g)
