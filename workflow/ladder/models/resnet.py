"""torchvision's ResNet family (ResNet-18/34/50, Wide-ResNet-50-2, ResNeXt-50 32x4d), randomly
initialised (`weights=None`), with the small-image options (small_image.py: no max-pool,
unstrided convolutions, head dropout), stochastic depth and ShakeDrop on chosen stages.

The family's blocks differ in where their residual branch ends: a BasicBlock (ResNet-18/34) at
bn2, a Bottleneck (the others) at bn3. Stochastic depth and ShakeDrop act there, before the
addition, so both apply to every member alike."""

from __future__ import annotations

from torch import nn

from ladder.models import shakedrop, small_image


def build(settings: dict, num_classes: int, image_size: int) -> nn.Module:
    """The registry's builder (ladder.model_registry): the resolved `model` settings."""
    import torchvision  # here, not at import: it costs a second of every process's start

    model = getattr(torchvision.models, settings["name"])(weights=None, num_classes=num_classes)
    if settings["stochastic_depth"] > 0:
        add_stochastic_depth(model, settings["stochastic_depth"])
    return small_image.variant(model, settings, shakedrop.add_to_resnet)


def add_stochastic_depth(model: nn.Module, rate: float) -> list[float]:
    """Drop each block's residual branch (the output of its last batch norm, before the
    addition) per image in training, block i of n with probability rate * i / n
    (small_image.depth_rates); return the probabilities."""
    from torchvision.ops import StochasticDepth

    blocks = [block for stage in range(1, 5) for block in getattr(model, f"layer{stage}")]
    probabilities = small_image.depth_rates(rate, len(blocks))
    for block, p in zip(blocks, probabilities, strict=True):
        name = shakedrop.branch_end(block)
        setattr(block, name, nn.Sequential(getattr(block, name), StochasticDepth(p, mode="row")))
    return probabilities
