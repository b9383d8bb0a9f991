"""Model construction: the seed's architectures, randomly initialised.

Which models exist, which settings each reads and which values it allows is
ladder.model_registry's (light, for ladder.config); an entry names its builder, one module per
model or family (mynet.py; resnet.py, regnet.py, mobilenet.py, convnext.py and efficientnet.py
for torchvision's, with small_image.py's options common to them all), and the files that
builder runs: an experiment's training and evaluation depend on its own model's files only
(ladder.config.model_code), so adding or editing one model reruns only the experiments that
use it. Weights are never downloaded (`weights=None`).
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
    """Spatial size of each top-level stage's output for one image (for checks and the docs):
    the ResNets' conv1 and layer1..4, the RegNets' stem and trunk_output (and its blocks), the
    others' features (and its stages). Works on the `meta` device too."""
    sizes = {}

    def record(name: str):
        return lambda _m, _i, out: sizes.__setitem__(name, tuple(out.shape[-2:]))

    stages = {"features", "conv1", "layer1", "layer2", "layer3", "layer4", "stem", "trunk_output"}
    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_children() if n in stages]
    for name in ("features", "trunk_output"):
        if hasattr(model, name):
            hooks += [
                m.register_forward_hook(record(f"{name}.{i}"))
                for i, m in enumerate(getattr(model, name))
            ]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return sizes
