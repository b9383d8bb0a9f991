"""Per-image random augmentations on whole batches, on the CPU or the GPU.

torchvision's v2 transforms called on a batched tensor draw ONE set of random parameters for the
whole batch; here every image draws its own, from the same distributions as the torchvision
transform named in each function (tests/test_augment.py compares them statistically). Images
enter as uint8 NCHW and leave as float32 in [0, 1]; `Normalize` follows.

The ops and their order (as in the seed's pipelines: flip, translate, rotate, blur, solarize) are
ladder.augment_registry's; each is a separate resampling like the torchvision transform it stands
for.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ladder import augment_registry

# ----------------------------------------------------------------------------------------------
# Single operations. Each takes a float batch (N, C, H, W) in [0, 1] and a generator on its device.


def _coin(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    """(n,) bool: which images an operation applied with probability p touches."""
    return torch.rand(n, generator=g, device=device) < p


def hflip(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """RandomHorizontalFlip(p)."""
    flip = _coin(len(x), p, g, x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def translate_params(
    n: int, size: int, p: float, max_fraction: float, g: torch.Generator, device
) -> torch.Tensor:
    """RandomApply([RandomAffine(degrees=0, translate=(m, m))], p): per image (tx, ty) in whole
    pixels, each round(U(-m * size, m * size)); zero where not applied."""
    bound = max_fraction * size
    drawn = torch.round((torch.rand(n, 2, generator=g, device=device) * 2 - 1) * bound)
    return torch.where(_coin(n, p, g, device)[:, None], drawn, 0.0)


def rotate_params(n: int, p: float, degrees: float, g: torch.Generator, device) -> torch.Tensor:
    """RandomApply([RandomAffine(degrees=d)], p): per image angle ~ U(-d, d), else zero."""
    drawn = (torch.rand(n, generator=g, device=device) * 2 - 1) * degrees
    return torch.where(_coin(n, p, g, device), drawn, 0.0)


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


def gaussian_kernels(sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """(n, kernel) normalised 1-D Gaussians, as torchvision's _get_gaussian_kernel1d."""
    half = (kernel - 1) * 0.5
    t = torch.linspace(-half, half, kernel, device=sigma.device)
    pdf = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    return pdf / pdf.sum(dim=1, keepdim=True)


def blur(x: torch.Tensor, p: float, kernel: int, sigma, g: torch.Generator) -> torch.Tensor:
    """RandomApply([GaussianBlur(kernel, sigma)], p); sigma fixed or ~ U(min, max) per image.
    Separable, with reflect padding, each image convolved with its own kernel."""
    n, c, h, w = x.shape
    lo, hi = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
    s = lo + (hi - lo) * torch.rand(n, generator=g, device=x.device)
    apply = _coin(n, p, g, x.device)
    k1 = gaussian_kernels(s, kernel).to(x.dtype).repeat_interleave(c, dim=0)  # (n*c, k)
    pad = kernel // 2
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), k1[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), k1[:, None, :, None], groups=n * c)
    return torch.where(apply[:, None, None, None], y.reshape(n, c, h, w), x)


def solarize(x: torch.Tensor, p: float, threshold: float, g: torch.Generator) -> torch.Tensor:
    """RandomSolarize(threshold, p) on [0, 1] images: invert the pixels >= threshold."""
    apply = _coin(len(x), p, g, x.device)[:, None, None, None]
    return torch.where(apply & (x >= threshold), 1.0 - x, x)


# ----------------------------------------------------------------------------------------------
# The ops as the pipeline calls them: a batch, the op's setting (`augment.<op>`), the generator.
# ladder.augment_registry names them, in the order they apply.


def apply_hflip(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    return hflip(x, p, g)


def apply_translate(x: torch.Tensor, s: dict, g: torch.Generator) -> torch.Tensor:
    n = len(x)
    shift = translate_params(n, x.shape[-1], s["p"], s["max"], g, x.device)
    return affine(x, torch.zeros(n, device=x.device), shift)


def apply_rotate(x: torch.Tensor, s: dict, g: torch.Generator) -> torch.Tensor:
    n = len(x)
    angle = rotate_params(n, s["p"], s["degrees"], g, x.device)
    return affine(x, angle, torch.zeros(n, 2, device=x.device))


def apply_blur(x: torch.Tensor, s: dict, g: torch.Generator) -> torch.Tensor:
    return blur(x, s["p"], s["kernel"], s["sigma"], g)


def apply_solarize(x: torch.Tensor, s: dict, g: torch.Generator) -> torch.Tensor:
    return solarize(x, s["p"], s["threshold"], g)


# ----------------------------------------------------------------------------------------------
# Pipelines


class Augment:
    """An experiment's training augmentations (its `augment` settings) as one batched callable."""

    def __init__(self, settings: dict):
        self.settings = settings
        # The ops that are on, in the registry's order; each a separate resampling.
        self.ops = [
            (op.function(), settings[op.name])
            for op in augment_registry.OPS
            if op.probability(settings) > 0
        ]

    @property
    def is_identity(self) -> bool:
        return not self.ops

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float32 in [0, 1], every image with its own random draw."""
        x = images.float().div_(255)
        for apply, setting in self.ops:
            x = apply(x, setting, g)
        return x


class Normalize(torch.nn.Module):
    """(x - mean) / std per channel, with mean/std in [0, 1] units."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def normalization(setting, stats: dict | None) -> dict:
    """Resolve the `normalize` setting to explicit per-channel mean/std."""
    if setting == "uniform":
        return {"mean": [0.5] * 3, "std": [0.5] * 3}
    if setting == "dataset":
        if stats is None:
            raise ValueError("normalize: dataset needs results/data/stats.json")
        return {"mean": list(stats["mean"]), "std": list(stats["std"])}
    return {"mean": list(setting["mean"]), "std": list(setting["std"])}
