"""Model construction: the seed's architectures from torchvision, randomly initialised.

Which models exist, which settings each reads and which values it allows is
ladder.model_registry's (light, for ladder.config); an entry names its builder below. Weights are
never downloaded (`weights=None`). Small-image variants set the first N stride-2 convolutions to
stride 1 (`unstride`), so a 64x64 image keeps more of its resolution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ladder.model_registry import MODELS
from ladder.models import shakedrop
from ladder.models.mynet import MyNet


def build(settings: dict, num_classes: int, image_size: int) -> nn.Module:
    """The model described by an experiment's resolved `model` settings."""
    name = settings["name"]
    if name not in MODELS:
        raise ValueError(f"model.name: unknown model {name!r}")
    return MODELS[name].builder()(settings, num_classes, image_size)


# ----------------------------------------------------------------------------------------------
# Builders, one per registry entry: (resolved `model` settings, classes, image side) -> model.
# torchvision only inside them: importing it costs a second of every process's start.


def build_mynet(settings: dict, num_classes: int, image_size: int) -> nn.Module:
    return MyNet(
        num_classes, image_size, settings["blocks"], settings["width"], settings["dropout"]
    )


def build_resnet18(settings: dict, num_classes: int, image_size: int) -> nn.Module:
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if not settings["maxpool"]:
        model.maxpool = nn.Identity()
    if settings["dropout"] > 0:
        model.fc = nn.Sequential(nn.Dropout(settings["dropout"]), model.fc)
    return _small_image_variant(model, settings, shakedrop.add_to_resnet)


def build_efficientnet_v2_s(settings: dict, num_classes: int, image_size: int) -> nn.Module:
    import torchvision

    model = torchvision.models.efficientnet_v2_s(
        weights=None, num_classes=num_classes, dropout=settings["dropout"]
    )
    return _small_image_variant(model, settings, shakedrop.add_to_efficientnet)


def _small_image_variant(
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


def feature_sizes(model: nn.Module, image_size: int) -> dict[str, tuple[int, int]]:
    """Spatial size of each top-level stage's output for one image (for checks and the docs)."""
    sizes = {}
    hooks = [
        m.register_forward_hook(
            lambda _m, _i, out, name=name: sizes.__setitem__(name, tuple(out.shape[-2:]))
        )
        for name, m in model.named_children()
        if name in {"features", "conv1", "layer1", "layer2", "layer3", "layer4"}
    ]
    if hasattr(model, "features"):
        hooks += [
            m.register_forward_hook(
                lambda _m, _i, out, i=i: sizes.__setitem__(f"features.{i}", tuple(out.shape[-2:]))
            )
            for i, m in enumerate(model.features)
        ]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return sizes
