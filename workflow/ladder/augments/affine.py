"""torchvision's F.affine on a batch, each image with its own angle and shift (translate and
rotate)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def affine(x: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's F.affine per image: rotate counter-clockwise by `angle` degrees about the
    centre, then shift by `shift` (tx, ty) pixels; nearest neighbour, zero fill."""
    n, _, h, w = x.shape
    a = angle * (math.pi / 180)
    cos, sin = torch.cos(a), torch.sin(a)
    # affine_grid maps output to input coordinates in [-1, 1] units (x right, y down): the
    # inverse rotation, applied to the output position minus the shift.
    inv = torch.stack(
        [torch.stack([cos, sin * h / w], -1), torch.stack([-sin * w / h, cos], -1)], -2
    )
    t = torch.stack([shift[:, 0] * 2 / w, shift[:, 1] * 2 / h], -1)
    theta = torch.cat([inv, -(inv @ t[:, :, None])], dim=2).float()
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    return F.grid_sample(
        x, grid.to(x.dtype), mode="nearest", padding_mode="zeros", align_corners=False
    )
