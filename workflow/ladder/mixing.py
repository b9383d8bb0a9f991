"""Batch mixing: mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019), on whole batches on the
device, as torchvision.transforms.v2's `MixUp` and `CutMix` do them.

One lambda per batch; every image is mixed with the one before it in the batch (the batch rolled
by one: batches are shuffled, so partners are random); the labels become soft targets weighted by
lambda (CutMix: by the area its box really covers once clipped to the image). With both on, a
mixed batch is CutMix with probability `switch_p`, else mixup (timm's `switch_prob`); `p` is how
often a batch is mixed at all. The soft targets go to the cross-entropy, whose label smoothing
then smooths the mixture (the same as mixing smoothed one-hot targets: both are linear).

Train accuracy under mixing counts a prediction as correct when it is the class with the largest
weight in the image's target: the image's own label when lambda >= 0.5, its partner's otherwise.

The batch-level draws (whether to mix, which, lambda, the box) are a few numbers per step, drawn
on the CPU by numpy from (epoch seed, step): nothing waits for the GPU, and a run resumed in the
middle of an epoch draws the same numbers without saving any state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional


@dataclass(frozen=True)
class Draw:
    """One batch's mixing: `kind` none | mixup | cutmix; `lam` the weight of each image's own
    label; `box` (x1, y1, x2, y2) the region CutMix pastes from the partner."""

    kind: str = "none"
    lam: float = 1.0
    box: tuple[int, int, int, int] | None = None


class Mixer:
    """An experiment's `mix` settings as a batch transform; built only for settings that mix
    (ladder.augment_registry.mixes), whose resolved form has `p`, and `switch_p` where both
    kinds are on (ladder.config prunes the settings that do not apply)."""

    def __init__(self, settings: dict, num_classes: int):
        self.mixup_alpha = settings["mixup_alpha"]
        self.cutmix_alpha = settings["cutmix_alpha"]
        self.p = settings["p"]
        self.switch_p = settings.get("switch_p")
        self.num_classes = num_classes

    def draw(self, seed: int, step: int, height: int, width: int) -> Draw:
        """The mixing of step `step` of the epoch whose seed is `seed`."""
        rng = np.random.default_rng([seed, step])
        if rng.random() >= self.p:
            return Draw()
        cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or rng.random() < self.switch_p)
        if not cutmix:
            return Draw("mixup", float(rng.beta(self.mixup_alpha, self.mixup_alpha)))
        return cutmix_draw(float(rng.beta(self.cutmix_alpha, self.cutmix_alpha)), rng,
                           height, width)  # fmt: skip

    def __call__(
        self, x: torch.Tensor, labels: torch.Tensor, draw: Draw
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) images and (N,) labels -> mixed images and (N, classes) soft targets."""
        targets = functional.one_hot(labels, self.num_classes).float()
        if draw.kind == "none":
            return x, targets
        targets = targets.roll(1, 0).mul_(1.0 - draw.lam).add_(targets.mul(draw.lam))
        if draw.kind == "mixup":
            return x.roll(1, 0).mul_(1.0 - draw.lam).add_(x.mul(draw.lam)), targets
        x1, y1, x2, y2 = draw.box
        out = x.clone()
        out[..., y1:y2, x1:x2] = x.roll(1, 0)[..., y1:y2, x1:x2]
        return out, targets


def cutmix_draw(lam: float, rng: np.random.Generator, height: int, width: int) -> Draw:
    """CutMix's box for a drawn lambda, as torchvision.transforms.v2.CutMix makes it: a centre
    uniform over the pixels, sides sqrt(1 - lam) of the image's, clipped to the image; the
    weight is then 1 - the clipped box's share of the image."""
    cx, cy = int(rng.integers(width)), int(rng.integers(height))
    r = 0.5 * math.sqrt(1.0 - lam)
    half_w, half_h = int(r * width), int(r * height)
    x1, y1 = max(cx - half_w, 0), max(cy - half_h, 0)
    x2, y2 = min(cx + half_w, width), min(cy + half_h, height)
    area = (x2 - x1) * (y2 - y1)
    return Draw("cutmix", 1.0 - area / (width * height), (x1, y1, x2, y2))
