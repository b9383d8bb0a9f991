"""What every op draws first: which images it touches."""

from __future__ import annotations

import torch


def coin(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    """(n,) bool: which images an operation applied with probability p touches."""
    return torch.rand(n, generator=g, device=device) < p
