"""The seed's small CNN: conv blocks (two 3x3 convs, ReLU, 2x2 max-pool), then a dense head."""

from __future__ import annotations

from torch import nn


class MyNet(nn.Sequential):
    def __init__(
        self,
        num_classes: int,
        image_size: int,
        blocks: int = 2,
        width: int = 32,
        dropout: float = 0.0,
    ):
        if image_size % (2**blocks):
            raise ValueError(
                f"model.blocks = {blocks}: image_size {image_size} is not divisible by {2**blocks}"
            )
        layers: list[nn.Module] = []
        channels = 3
        for i in range(blocks):
            out = width * 2**i
            layers += [
                nn.Conv2d(channels, out, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(out, out, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = out
        side = image_size // 2**blocks
        layers += [
            nn.Flatten(),
            nn.Linear(channels * side * side, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        ]
        super().__init__(*layers)


def build(settings: dict, num_classes: int, image_size: int) -> nn.Module:
    """The registry's builder (ladder.model_registry): the resolved `model` settings."""
    return MyNet(
        num_classes, image_size, settings["blocks"], settings["width"], settings["dropout"]
    )
