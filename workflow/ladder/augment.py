"""Per-image random augmentations on whole batches, on the CPU or the GPU.

torchvision's v2 transforms called on a batched tensor draw ONE set of random parameters for the
whole batch; here every image draws its own, from the same distributions as the torchvision
transform each op stands for (the ops: ladder/augments/, one module each). Images enter as uint8
NCHW and leave as float32 in [0, 1]; `Normalize` follows.

The ops and their order (as in the seed's pipelines: flip, translate, rotate, blur, solarize; then
the automatic policies; then random erasing) are ladder.augment_registry's; each is a separate
resampling like the torchvision transform it stands for.
"""

from __future__ import annotations

import torch

from ladder import augment_registry

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
