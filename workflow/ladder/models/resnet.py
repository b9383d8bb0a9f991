"""torchvision's ResNet-18, randomly initialised (`weights=None`), with the small-image options:
no max-pool, unstrided convolutions, head dropout, stochastic depth, ShakeDrop on chosen stages."""

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
    if settings["stochastic_depth"] > 0:
        add_stochastic_depth(model, settings["stochastic_depth"])
    return small_image.variant(model, settings, shakedrop.add_to_resnet)


def add_stochastic_depth(model: nn.Module, rate: float) -> list[float]:
    """Drop each BasicBlock's residual branch (the output of bn2, before the addition) per image
    in training, block i of n with probability rate * i / n (torchvision's EfficientNet rule);
    return the probabilities."""
    from torchvision.ops import StochasticDepth

    blocks = [block for stage in range(1, 5) for block in getattr(model, f"layer{stage}")]
    probabilities = [rate * i / len(blocks) for i in range(len(blocks))]
    for block, p in zip(blocks, probabilities, strict=True):
        block.bn2 = nn.Sequential(block.bn2, StochasticDepth(p, mode="row"))
    return probabilities
