"""RandomErasing(p, scale, ratio, value) on [0, 1] images, per image.

As torchvision's: up to 10 tries per image, each an area ~ U(scale) of the image and an aspect
ratio ~ exp(U(log ratio)), rounded to whole pixels; the first try that fits inside the image is
erased at a uniform position, and an image whose 10 tries all fail is left as it is. The tries of
every image are drawn at once, so the whole batch takes a fixed number of device calls.
"""

from __future__ import annotations

import math

import torch

from ladder.augments.common import coin

TRIES = 10  # torchvision's


def erase_boxes(
    n: int, height: int, width: int, scale, ratio, g: torch.Generator, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image (top, left, h, w) of the box to erase and whether a try fitted."""
    u = torch.rand(n, TRIES, 2, generator=g, device=device)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u[..., 1])
    h = torch.round(torch.sqrt(area * aspect))
    w = torch.round(torch.sqrt(area / aspect))
    fits = (h < height) & (w < width)
    first = fits.float().argmax(1, keepdim=True)  # the first try that fits (0 if none does)
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    pos = torch.rand(n, 2, generator=g, device=device)
    top = torch.floor(pos[:, 0] * (height - h + 1))
    left = torch.floor(pos[:, 1] * (width - w + 1))
    return top, left, h, w, fits.any(1)


def erase(x: torch.Tensor, s: dict, g: torch.Generator) -> torch.Tensor:
    n, _, height, width = x.shape
    on = coin(n, s["p"], g, x.device)
    top, left, h, w, fitted = erase_boxes(n, height, width, s["scale"], s["ratio"], g, x.device)
    rows = torch.arange(height, device=x.device)[None, :]
    cols = torch.arange(width, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])  # (n, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])  # (n, W)
    box = in_rows[:, :, None] & in_cols[:, None, :] & (on & fitted)[:, None, None]
    return torch.where(box[:, None], torch.as_tensor(s["value"], dtype=x.dtype), x)


def apply(x: torch.Tensor, s: dict, g: torch.Generator) -> torch.Tensor:
    return erase(x, s, g)
