"""The ops of the automatic augmentation policies (RandAugment, TrivialAugmentWide,
AutoAugment), for a batch in which every image has its own op and magnitude.

Each op is what torchvision.transforms.v2's policies do to one float image
(_AutoAugmentBase._apply_image_or_video_transform: nearest-neighbour, zero fill), with a
magnitude per image. tests/test_augment_policies.py checks each op, image by image, against
torchvision's.

The magnitude tables and AutoAugment's sub-policies are torchvision's own (read from its classes,
`space` and `subpolicies` below), so the settings mean exactly what they mean there.
"""

from __future__ import annotations

import functools
import math

import torch
from torchvision.transforms.v2 import functional as F

from ladder.augments.affine import inverse_matrix, warp


@functools.cache  # built once per setting and device, not every training step
def space(
    transform: type, bins: int, height: int, width: int, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """A policy class's ops and magnitudes (its _AUGMENTATION_SPACE at `bins` bins) on `device`:
    op ids (k,), magnitudes (k, bins) (0 for ops without one) and whether each is signed (k,)."""
    ops, magnitudes, signed = [], [], []
    for name, (table, is_signed) in transform._AUGMENTATION_SPACE.items():
        values = table(bins, height, width)
        ops.append(ID[name])
        magnitudes.append(torch.zeros(bins) if values is None else values.float())
        signed.append(is_signed)
    return tuple(
        t.to(device) for t in (torch.tensor(ops), torch.stack(magnitudes), torch.tensor(signed))
    )


def draw_sign(magnitude: torch.Tensor, signed: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Negate a signed op's magnitude with probability 0.5 (torchvision: rand() <= 0.5)."""
    flip = signed & (torch.rand(len(magnitude), generator=g, device=magnitude.device) <= 0.5)
    return torch.where(flip, -magnitude, magnitude)


def apply_ops(
    x: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor, gather: bool | None = None
) -> torch.Tensor:
    """x (n, C, H, W) float in [0, 1]; op (n,) ids into NAMES; magnitude (n,) float, signed as
    torchvision passes it to the op. Returns each image with its own op applied.

    Two ways to the same images (tested equal): `gather` (the default on the CPU) runs each op on
    the images that drew it only; otherwise (the default on a GPU) every op runs on the whole
    batch and each image keeps its own op's result: more arithmetic, but a fixed number of device
    calls and no host sync (which indexing by op would need) in the training step."""
    if gather is None:
        gather = x.device.type == "cpu"
    if gather:
        out = x.clone()
        for i in torch.unique(op).tolist():
            if i != ID["Identity"]:
                rows = (op == i).nonzero()[:, 0]
                out[rows] = OPS[NAMES[i]](x[rows], magnitude[rows])
        return out
    out = x
    for name, fn in OPS.items():
        if name != "Identity":
            chosen = (op == ID[name])[:, None, None, None]
            out = torch.where(chosen, fn(x, magnitude), out)
    return out


# ----------------------------------------------------------------------------------------------
# The ops: (images (n, C, H, W), magnitudes (n,)) -> images


def _per_image(m: torch.Tensor) -> torch.Tensor:
    return m[:, None, None, None]


def _shear(axis: int):
    """F.affine with shear atan(m) in degrees along `axis`, about the top-left corner."""

    def shear(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        degrees = torch.atan(m.double()) * (180 / math.pi)  # float64, as torchvision's floats
        shears = torch.zeros(len(m), 2, dtype=torch.float64, device=m.device)
        shears[:, axis] = degrees
        corner = torch.tensor([[-w / 2, -h / 2]], dtype=torch.float64, device=m.device)
        no_shift = torch.zeros(len(m), 2, device=m.device)
        return warp(
            x, inverse_matrix(torch.zeros_like(m), no_shift, shears, corner.expand(len(m), 2))
        )

    return shear


def _translate(axis: int):
    """F.affine with a shift of int(m) pixels along `axis`."""

    def translate(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        shift = torch.zeros(len(m), 2, device=m.device)
        shift[:, axis] = torch.trunc(m)
        return warp(x, inverse_matrix(torch.zeros_like(m), shift))

    return translate


def _rotate(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """F.rotate by m degrees, that is F.affine by -m."""
    return warp(x, inverse_matrix(-m, torch.zeros(len(m), 2, device=m.device)))


def _blend(x: torch.Tensor, degenerate: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """torchvision's blend by factor 1 + m: x * f + degenerate * (1 - f), where it computes
    1 - f in float64 (-m exactly), clipped to [0, 1]."""
    return (x * _per_image(1 + m) + degenerate * _per_image(-m)).clamp(0, 1)


def _colour(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Saturation: a blend with the greyscale image (one-channel images left as they are)."""
    return x if x.shape[-3] == 1 else _blend(x, F.rgb_to_grayscale(x), m)


def _contrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """A blend with the image's mean grey level."""
    grey = F.rgb_to_grayscale(x) if x.shape[-3] == 3 else x
    return _blend(x, grey.mean(dim=(-3, -2, -1), keepdim=True), m)


_SHARPEN = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13  # torchvision's


def _sharpness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Inside a 1-pixel border, a blend with the image's 3x3 blur (torchvision's formula:
    x + (1 - f) * (blur - x)); the border, and images 2 pixels or fewer across, left as they are."""
    c, h, w = x.shape[-3:]
    if h <= 2 or w <= 2:
        return x
    inside = x[..., 1:-1, 1:-1]
    blurred = torch.nn.functional.conv2d(x, _SHARPEN.to(x).expand(c, 1, 3, 3), groups=c)
    out = x.clone()
    out[..., 1:-1, 1:-1] = (inside + _per_image(-m) * (blurred - inside)).clamp(0, 1)
    return out


def _posterize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """int(m) bits: on float images, torchvision's floor(x * 2^bits) / 2^bits."""
    levels = _per_image(torch.exp2(torch.trunc(m)))
    return (x * levels).floor().clamp(min=0).minimum(levels - 1) * (1 / levels)


OPS = {
    "Identity": lambda x, m: x,
    "ShearX": _shear(0),
    "ShearY": _shear(1),
    "TranslateX": _translate(0),
    "TranslateY": _translate(1),
    "Rotate": _rotate,
    "Brightness": lambda x, m: (x * _per_image(1 + m)).clamp(0, 1),
    "Color": _colour,
    "Contrast": _contrast,
    "Sharpness": _sharpness,
    "Posterize": _posterize,
    "Solarize": lambda x, m: torch.where(x >= _per_image(m), 1.0 - x, x),  # threshold 1.0 * m
    "AutoContrast": lambda x, m: F.autocontrast(x),
    "Equalize": lambda x, m: F.equalize(x),
    "Invert": lambda x, m: 1.0 - x,
}
NAMES = tuple(OPS)  # an op's id is its place here
ID = {name: i for i, name in enumerate(NAMES)}
