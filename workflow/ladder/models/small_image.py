"""Small-image variants of torchvision's models, one set of rules for every family.

torchvision's ImageNet models shrink a 224x224 image 32 times before their last stage; a 64x64
image ends at 2x2 and a 32x32 one at 1x1. The options here keep more of the resolution, each
applied where the model's registry entry reads it (its resolved settings hold the key):

- `maxpool: false` drops the max-pool after the stem (the ResNet family has one; the other
  families do not, and their entries do not read the key);
- `unstride: N` undoes the first N halvings of resolution, in the order the model runs them:
  a stride-2 convolution becomes stride 1 (its kernel and padding unchanged); a *patchify*
  convolution (kernel = stride, no padding: ConvNeXt's 4x4 stride-4 stem and its 2x2 stride-2
  downsampling layers) halves its stride and kernel together, so it still cuts the image into
  non-overlapping patches (4x4 -> 2x2 -> 1x1; ConvNeXt's stem is two halvings). Which N a model
  allows is its registry entry's: where a block's main branch and its shortcut both stride
  (ResNets, RegNets), N must not split such a pair;
- `dropout` before the final linear layer, for the families without one of their own (the
  families with one, EfficientNet and MobileNetV3, take the setting in their constructor);
- ShakeDrop on the residual blocks of the chosen stages, through the family's own function.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def variant(
    model: nn.Module,
    settings: dict,
    add_shakedrop: Callable[[nn.Module, float, list], int] | None = None,
    *,
    head_dropout: bool = True,
) -> nn.Module:
    """The options above, as `settings` (a model's resolved settings) asks; `head_dropout`
    False where the family applies `dropout` itself."""
    if settings.get("maxpool", True) is False:
        drop_maxpool(model)
    unstride(model, settings.get("unstride", 0))
    if head_dropout and settings.get("dropout", 0) > 0:
        add_head_dropout(model, settings["dropout"])
    sd = settings.get("shakedrop", {"p_drop": 0.0})
    if sd["p_drop"] > 0 and add_shakedrop(model, sd["p_drop"], sd["stages"]) == 0:
        raise ValueError(f"model.shakedrop.stages = {sd['stages']}: no residual block there")
    return model


def drop_maxpool(model: nn.Module) -> str:
    """Replace the max-pool after the stem (the model's first) by the identity; return its name."""
    name = next((n for n, m in model.named_modules() if isinstance(m, nn.MaxPool2d)), None)
    if name is None:
        raise ValueError("model.maxpool = false: the model has no max-pool")
    model.set_submodule(name, nn.Identity())
    return name


def unstride(model: nn.Module, n: int) -> list[str]:
    """Undo the first `n` halvings of resolution (module docstring); return the name of the
    convolution of each, in order (a stride-4 convolution appears once per halving)."""
    changed: list[str] = []
    for name, conv in model.named_modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        while len(changed) < n and conv.stride[0] > 1:
            _halve_stride(conv, name)
            changed.append(name)
    if len(changed) < n:
        raise ValueError(
            f"model.unstride = {n}: the model halves its resolution only {len(changed)} times"
        )
    return changed


def _halve_stride(conv: nn.Conv2d, name: str) -> None:
    stride = conv.stride[0]
    if conv.stride != (stride, stride) or stride & (stride - 1):
        raise ValueError(f"model.unstride: {name} has stride {conv.stride}, not a power of two")
    patchify = conv.kernel_size == conv.stride and conv.padding == (0, 0)
    conv.stride = (stride // 2, stride // 2)
    if patchify:
        # The kernel's top-left corner: the same distribution the family drew the whole
        # kernel from where that does not depend on the kernel's size (ConvNeXt: a truncated
        # normal of std 0.02 for every convolution), so the one it would have drawn for it.
        k = stride // 2
        conv.weight = nn.Parameter(conv.weight.detach()[:, :, :k, :k].clone())
        conv.kernel_size = (k, k)


def add_head_dropout(model: nn.Module, p: float) -> str:
    """Dropout before the model's last linear layer (its classifier); return that layer's name."""
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    model.set_submodule(name, nn.Sequential(nn.Dropout(p), model.get_submodule(name)))
    return name


def depth_rates(rate: float, blocks: int) -> list[float]:
    """Stochastic depth's drop probability per residual block: block i of n drops its branch
    with probability rate * i / n (torchvision's rule for its EfficientNets)."""
    return [rate * i / blocks for i in range(blocks)]
