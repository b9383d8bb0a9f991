"""torchvision's RegNetY models (Radosavovic et al. 2020), randomly initialised (`weights=None`),
with the small-image options (small_image.py: unstrided convolutions, head dropout).

A RegNet has no max-pool; its stem is one stride-2 convolution, and the first block of each of
its four stages strides twice, in its projection shortcut and in its 3x3 group convolution,
which `unstride` must undo together."""

from __future__ import annotations

import torch
from torch import nn

from ladder.models import small_image


def build(settings: dict, num_classes: int, image_size: int) -> nn.Module:
    """The registry's builder (ladder.model_registry): the resolved `model` settings."""
    import torchvision  # here, not at import: it costs a second of every process's start

    # RegNet works out its stage widths with tensors and reads them back (.tolist()), which
    # tensors on the `meta` device (ladder.flops counts there) cannot do: build on the CPU then.
    device = torch.get_default_device()
    with torch.device("cpu" if device.type == "meta" else device):
        model = getattr(torchvision.models, settings["name"])(weights=None, num_classes=num_classes)
    return small_image.variant(model.to(device), settings)
