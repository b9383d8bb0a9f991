"""torchvision's F.affine on a batch, each image with its own angle, shift, shear and centre
(translate, rotate and the automatic augmentation policies' geometric ops).

The matrix and the sampling grid are torchvision's own formulas (transforms.functional.
_get_inverse_affine_matrix, v2's _affine_grid), computed for every image at once, so an image
comes out as F.affine(image, ...) with nearest-neighbour sampling and zero fill gives it
(tests/test_augment.py compares them pixel for pixel).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def inverse_matrix(
    angle: torch.Tensor,
    shift: torch.Tensor,
    shear: torch.Tensor | None = None,
    centre: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n, 2, 3) float64: per image the output -> input map of F.affine(angle (degrees), translate
    (tx, ty) pixels, scale 1, shear (x, y) degrees, centre (cx, cy) pixels from the image's centre).
    """
    n = len(angle)
    zeros = torch.zeros(n, 2, dtype=torch.float64, device=angle.device)
    shear = zeros if shear is None else shear.double()
    centre = zeros if centre is None else centre.double()
    rot = angle.double() * (math.pi / 180)
    sx, sy = shear[:, 0] * (math.pi / 180), shear[:, 1] * (math.pi / 180)
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    # The inverse of the rotation-shear (its determinant is 1), then undo shift and centre.
    ux = -centre[:, 0] - shift[:, 0].double()
    uy = -centre[:, 1] - shift[:, 1].double()
    row0 = torch.stack([d, -b, d * ux + -b * uy + centre[:, 0]], -1)
    row1 = torch.stack([-c, a, -c * ux + a * uy + centre[:, 1]], -1)
    return torch.stack([row0, row1], 1)


def warp(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Resample each image of x (n, C, H, W) through its inverse matrix (n, 2, 3): nearest
    neighbour, zero outside the image."""
    n, _, h, w = x.shape
    theta = matrix.to(x.dtype)
    base = torch.empty(1, h, w, 3, dtype=x.dtype, device=x.device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=x.device))
    base[..., 1].copy_(
        torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, device=x.device).unsqueeze(-1)
    )
    base[..., 2].fill_(1)
    scale = torch.tensor([0.5 * w, 0.5 * h], dtype=x.dtype, device=x.device)
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(theta.transpose(1, 2) / scale)
    return F.grid_sample(
        x, grid.view(n, h, w, 2), mode="nearest", padding_mode="zeros", align_corners=False
    )


def affine(x: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's F.affine(angle, translate=shift) per image: the centre fixed, no shear."""
    return warp(x, inverse_matrix(angle, shift))
