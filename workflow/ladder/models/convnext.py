"""torchvision's ConvNeXt-Tiny (Liu et al. 2022), randomly initialised (`weights=None`), with the
small-image options (small_image.py: a finer patchify stem and downsampling, head dropout) and
stochastic depth.

ConvNeXt's stem cuts the image into 4x4 patches (a 4x4 stride-4 convolution) and each of its
three downsampling layers into 2x2 ones; none sits inside a residual block. `unstride` 1 makes
the stem 2x2 patches, 2 makes it 1x1 (a 64x64 image enters the first stage at 64x64 rather than
16x16), 3 to 5 then the downsampling layers in turn. Its head (layer norm, linear) has no
dropout: `dropout` adds one before the linear layer."""

from __future__ import annotations

from torch import nn

from ladder.models import small_image


def build(settings: dict, num_classes: int, image_size: int) -> nn.Module:
    """The registry's builder (ladder.model_registry): the resolved `model` settings."""
    import torchvision  # here, not at import: it costs a second of every process's start

    # torchvision's own stochastic depth (0.1 by default) is off: ours follows the ResNets' rule.
    model = getattr(torchvision.models, settings["name"])(
        weights=None, num_classes=num_classes, stochastic_depth_prob=0.0
    )
    if settings["stochastic_depth"] > 0:
        add_stochastic_depth(model, settings["stochastic_depth"])
    return small_image.variant(model, settings)


def add_stochastic_depth(model: nn.Module, rate: float) -> list[float]:
    """Each CNBlock's own StochasticDepth (after its layer scale, before the addition), block i
    of n dropping its branch with probability rate * i / n (small_image.depth_rates), where
    torchvision's rule would reach `rate` itself at the last block; return the probabilities."""
    from torchvision.models.convnext import CNBlock
    from torchvision.ops import StochasticDepth

    blocks = [m for m in model.modules() if isinstance(m, CNBlock)]
    probabilities = small_image.depth_rates(rate, len(blocks))
    for block, p in zip(blocks, probabilities, strict=True):
        block.stochastic_depth = StochasticDepth(p, mode="row")
    return probabilities
