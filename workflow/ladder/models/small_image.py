"""Small-image variants of torchvision's models: the first N stride-2 convolutions set to stride
1 (`unstride`), so a 64x64 image keeps more of its resolution, and ShakeDrop where asked."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def variant(
    model: nn.Module, settings: dict, add_shakedrop: Callable[[nn.Module, float, list], int]
) -> nn.Module:
    """`unstride` and ShakeDrop, common to the torchvision models."""
    unstride(model, settings["unstride"])
    sd = settings["shakedrop"]
    if sd["p_drop"] > 0 and add_shakedrop(model, sd["p_drop"], sd["stages"]) == 0:
        raise ValueError(f"model.shakedrop.stages = {sd['stages']}: no residual block there")
    return model


def unstride(model: nn.Module, n: int) -> list[str]:
    """Set the first `n` stride-2 convolutions (in order) to stride 1; return their names."""
    changed = []
    for name, module in model.named_modules():
        if len(changed) == n:
            break
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)
            changed.append(name)
    if len(changed) < n:
        raise ValueError(
            f"model.unstride = {n}: the model has only {len(changed)} stride-2 convolutions"
        )
    return changed
