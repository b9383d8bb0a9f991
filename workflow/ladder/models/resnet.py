"""torchvision's ResNet-18, randomly initialised (`weights=None`), with the small-image options:
no max-pool, unstrided convolutions, head dropout, ShakeDrop on chosen stages."""

from __future__ import annotations

from torch import nn

from ladder.models import shakedrop, small_image


def build(settings: dict, num_classes: int, image_size: int) -> nn.Module:
    """The registry's builder (ladder.model_registry): the resolved `model` settings."""
    import torchvision  # here, not at import: it costs a second of every process's start

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if not settings["maxpool"]:
        model.maxpool = nn.Identity()
    if settings["dropout"] > 0:
        model.fc = nn.Sequential(nn.Dropout(settings["dropout"]), model.fc)
    return small_image.variant(model, settings, shakedrop.add_to_resnet)
