"""torchvision's MobileNetV3 (Howard et al. 2019), small and large, randomly initialised
(`weights=None`), with its own classifier dropout and unstrided convolutions (small_image.py).

MobileNetV3 has no max-pool and no stride in a residual block (a block that strides has no
shortcut), so any number of its five stride-2 convolutions can be undone. Its classifier is
linear, Hardswish, dropout, linear: `dropout` is that dropout (torchvision's default 0.2)."""

from __future__ import annotations

from torch import nn

from ladder.models import small_image


def build(settings: dict, num_classes: int, image_size: int) -> nn.Module:
    """The registry's builder (ladder.model_registry): the resolved `model` settings."""
    import torchvision  # here, not at import: it costs a second of every process's start

    model = getattr(torchvision.models, settings["name"])(
        weights=None, num_classes=num_classes, dropout=settings["dropout"]
    )
    return small_image.variant(model, settings, head_dropout=False)
