"""The ops of the automatic augmentation policies (RandAugment, TrivialAugmentWide,
AutoAugment), for a batch in which every image has its own op and magnitude.

Each op is what torchvision.transforms.v2's policies do to one float image
(_AutoAugmentBase._apply_image_or_video_transform: nearest-neighbour, zero fill); here the whole
batch goes through every op once and each image keeps its own op's result, so a batch takes a
fixed number of device calls whatever its draws (no per-op indexing, no host sync).
tests/test_augment_policies.py checks each op, image by image, against torchvision's.

The magnitude tables and AutoAugment's sub-policies are torchvision's own (read from its classes,
`space` and `subpolicies` below), so the settings mean exactly what they mean there.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as F

from ladder.augments.affine import inverse_matrix, warp

NAMES = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
)
ID = {name: i for i, name in enumerate(NAMES)}
_SHARPEN = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13  # torchvision's


def space(transform: type, bins: int, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """A policy class's ops and magnitudes (its _AUGMENTATION_SPACE at `bins` bins): op ids (k,),
    magnitudes (k, bins) (0 for ops without one) and whether each is signed (k,)."""
    ops, magnitudes, signed = [], [], []
    for name, (table, is_signed) in transform._AUGMENTATION_SPACE.items():
        values = table(bins, height, width)
        ops.append(ID[name])
        magnitudes.append(torch.zeros(bins) if values is None else values.float())
        signed.append(is_signed)
    return torch.tensor(ops), torch.stack(magnitudes), torch.tensor(signed)


def draw_sign(magnitude: torch.Tensor, signed: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Negate a signed op's magnitude with probability 0.5 (torchvision: rand() <= 0.5)."""
    flip = signed & (torch.rand(len(magnitude), generator=g, device=magnitude.device) <= 0.5)
    return torch.where(flip, -magnitude, magnitude)


def apply_ops(x: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """x (n, C, H, W) float in [0, 1]; op (n,) ids into NAMES; magnitude (n,) float, signed as
    torchvision passes it to the op. Returns each image with its op applied."""
    out = _geometric(x, op, magnitude)
    out = _blend(out, op, magnitude)
    m = magnitude[:, None, None, None]
    levels = torch.exp2(torch.trunc(m))  # Posterize: int(magnitude) bits
    posterized = (out * levels).floor().clamp(min=0).minimum(levels - 1) * (1 / levels)
    choices = {
        "Posterize": posterized,
        "Solarize": torch.where(out >= m, 1.0 - out, out),
        "AutoContrast": F.autocontrast(out),
        "Equalize": F.equalize(out),
        "Invert": 1.0 - out,
    }
    for name, result in choices.items():
        out = torch.where((op == ID[name])[:, None, None, None], result, out)
    return out


def _geometric(x: torch.Tensor, op: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """ShearX/Y (F.affine, shear atan(m) in degrees about the top-left corner), TranslateX/Y
    (F.affine, int(m) pixels), Rotate (F.rotate by m, that is F.affine by -m): one warp."""
    h, w = x.shape[-2:]
    zero = torch.zeros_like(m)
    shear = torch.atan(m.double()) * (180 / math.pi)  # in float64, as torchvision's Python floats
    sheared_x, sheared_y = op == ID["ShearX"], op == ID["ShearY"]
    angle = torch.where(op == ID["Rotate"], -m, zero)
    shift = torch.stack(
        [
            torch.where(op == ID["TranslateX"], torch.trunc(m), zero),
            torch.where(op == ID["TranslateY"], torch.trunc(m), zero),
        ],
        -1,
    )
    shears = torch.stack(
        [torch.where(sheared_x, shear, 0.0), torch.where(sheared_y, shear, 0.0)], -1
    )
    corner = torch.tensor([-w / 2, -h / 2], dtype=m.dtype, device=m.device)
    centre = torch.where((sheared_x | sheared_y)[:, None], corner, 0.0)
    moved = torch.isin(op, torch.tensor([ID[k] for k in NAMES[1:6]], device=op.device))
    warped = warp(x, inverse_matrix(angle, shift, shears, centre))
    return torch.where(moved[:, None, None, None], warped, x)


def _blend(x: torch.Tensor, op: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Brightness, Color, Contrast, Sharpness: torchvision's blend of the image with a degenerate
    one (black; its greyscale; its mean grey level; its 3x3 blur inside a 1-pixel border) by
    factor 1 + m, clipped to [0, 1]; one blend, each image with its own op's degenerate image."""
    c, h, w = x.shape[-3:]
    is_ = {name: (op == ID[name])[:, None, None, None] for name in NAMES[6:10]}
    grey = F.rgb_to_grayscale(x) if c == 3 else x
    mean = grey.mean(dim=(-3, -2, -1), keepdim=True)
    blurred = x.clone()
    if h > 2 and w > 2:  # torchvision leaves images of 2 pixels or fewer across unsharpened
        kernel = _SHARPEN.to(x).expand(c, 1, 3, 3)
        blurred[..., 1:-1, 1:-1] = torch.nn.functional.conv2d(x, kernel, groups=c)
    degenerate = torch.where(
        is_["Brightness"],
        torch.zeros_like(x),
        torch.where(is_["Color"], grey, torch.where(is_["Contrast"], mean, blurred)),
    )
    # torchvision's blend is x * f + degenerate * (1 - f) with 1 - f computed in float64: -m.
    blended = (x * (1 + m)[:, None, None, None] + degenerate * -m[:, None, None, None]).clamp(0, 1)
    on = is_["Brightness"] | is_["Contrast"] | is_["Sharpness"]
    if c == 3:  # torchvision leaves a one-channel image's saturation as it is
        on = on | is_["Color"]
    return torch.where(on, blended, x)
