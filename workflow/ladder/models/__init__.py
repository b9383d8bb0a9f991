"""Model construction: the seed's architectures, randomly initialised.

Which models exist, which settings each reads and which values it allows is
ladder.model_registry's (light, for ladder.config); an entry names its builder, one module per
model (mynet.py, resnet.py, efficientnet.py), and the files that builder runs: an experiment's
training and evaluation depend on its own model's files only (ladder.config.model_code), so
adding or editing one model reruns only the experiments that use it. Weights are never
downloaded (`weights=None`).
"""

from __future__ import annotations

import torch
from torch import nn

from ladder.model_registry import MODELS


def build(settings: dict, num_classes: int, image_size: int) -> nn.Module:
    """The model described by an experiment's resolved `model` settings."""
    name = settings["name"]
    if name not in MODELS:
        raise ValueError(f"model.name: unknown model {name!r}")
    return MODELS[name].builder()(settings, num_classes, image_size)


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
