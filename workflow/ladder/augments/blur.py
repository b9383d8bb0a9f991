"""RandomApply([GaussianBlur(kernel, sigma)], p), per image."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ladder.augments.common import coin


def gaussian_kernels(sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """(n, kernel) normalised 1-D Gaussians, as torchvision's _get_gaussian_kernel1d."""
    half = (kernel - 1) * 0.5
    t = torch.linspace(-half, half, kernel, device=sigma.device)
    pdf = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    return pdf / pdf.sum(dim=1, keepdim=True)


def blur(x: torch.Tensor, p: float, kernel: int, sigma, g: torch.Generator) -> torch.Tensor:
    """Sigma fixed or ~ U(min, max) per image. Separable, with reflect padding, each image
    convolved with its own kernel."""
    n, c, h, w = x.shape
    lo, hi = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
    s = lo + (hi - lo) * torch.rand(n, generator=g, device=x.device)
    on = coin(n, p, g, x.device)
    k1 = gaussian_kernels(s, kernel).to(x.dtype).repeat_interleave(c, dim=0)  # (n*c, k)
    pad = kernel // 2
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), k1[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), k1[:, None, :, None], groups=n * c)
    return torch.where(on[:, None, None, None], y.reshape(n, c, h, w), x)


def apply(x: torch.Tensor, s: dict, g: torch.Generator) -> torch.Tensor:
    return blur(x, s["p"], s["kernel"], s["sigma"], g)
