"""torchvision's EfficientNetV2-S, randomly initialised (`weights=None`), with head dropout,
unstrided convolutions and ShakeDrop on chosen stages."""

from __future__ import annotations

from torch import nn

from ladder.models import shakedrop, small_image


def build(settings: dict, num_classes: int, image_size: int) -> nn.Module:
    """The registry's builder (ladder.model_registry): the resolved `model` settings."""
    import torchvision  # here, not at import: it costs a second of every process's start

    model = torchvision.models.efficientnet_v2_s(
        weights=None, num_classes=num_classes, dropout=settings["dropout"]
    )
    return small_image.variant(model, settings, shakedrop.add_to_efficientnet, head_dropout=False)
