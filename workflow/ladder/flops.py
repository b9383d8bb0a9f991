"""What a model costs, counted rather than guessed: FLOPs of a training step and of an inference
pass, and the bytes of a checkpoint.

FLOPs are counted by torch's FlopCounterMode (matrix multiplications and convolutions, 2 FLOPs
per multiply-add; normalisation, activations and the optimiser are not counted) on a model built
on the `meta` device: shapes only, no memory and no arithmetic, so EfficientNetV2-S at batch 256
is counted in a second on any machine. The count is exact and linear in the batch.

One correction to torch's formulas: torch (2.14) counts the weight gradient of a grouped
convolution as if the convolution were dense, `groups` times too many; EfficientNetV2-S's
depthwise convolutions (up to 1,536 groups) make its backward pass about 5x too expensive that
way. The weight gradient of a convolution costs what its forward pass costs, groups or not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

import torch
from torch.nn import functional as F
from torch.utils import flop_counter

from ladder import models

_GROUPS, _OUTPUT_MASK = 9, 10  # positions in aten.convolution_backward's arguments


def _conv_backward(*args, out_shape=None, **kwargs) -> int:
    """torch's convolution-backward formula, with the weight gradient divided by `groups`."""
    groups, (grad_input, grad_weight, _bias) = args[_GROUPS], args[_OUTPUT_MASK]
    head, tail = args[:_OUTPUT_MASK], args[_OUTPUT_MASK + 1 :]

    def count(mask: list[bool]) -> int:
        return flop_counter.conv_backward_flop(*head, mask, *tail, out_val=out_shape, **kwargs)

    flops = count([True, False, False]) if grad_input else 0
    if grad_weight:
        flops += count([False, True, False]) // groups
    return flops


CORRECTIONS = {torch.ops.aten.convolution_backward: _conv_backward}


def counter() -> flop_counter.FlopCounterMode:
    """A FlopCounterMode with the correction above."""
    return flop_counter.FlopCounterMode(display=False, custom_mapping=CORRECTIONS)


@dataclass(frozen=True)
class ModelCost:
    train_step: int  # FLOPs of one training step (forward + backward) at `batch`
    forward_image: int  # FLOPs of one image's inference (eval mode, no gradients)
    parameters: int  # trainable parameters
    checkpoint_bytes: int  # bytes of the tensors a checkpoint holds (the state dict)
    batch: int


def model_cost(model: dict, num_classes: int, image_size: int, batch: int) -> ModelCost:
    """The cost of an experiment's model (its resolved `model` settings) on `image_size` images
    of `num_classes` classes, trained at `batch`. Cached per distinct set of arguments."""
    return _cost(json.dumps(model, sort_keys=True), num_classes, image_size, batch)


@cache
def _cost(model_json: str, num_classes: int, image_size: int, batch: int) -> ModelCost:
    with torch.device("meta"):
        model = models.build(json.loads(model_json), num_classes, image_size)
        x = torch.empty(batch, 3, image_size, image_size)
        y = torch.zeros(batch, dtype=torch.long)
    model.train()
    with counter() as train:
        F.cross_entropy(model(x), y).backward()
    model.eval()
    with counter() as inference, torch.no_grad():
        model(x[:1])
    state = model.state_dict()
    return ModelCost(
        train_step=train.get_total_flops(),
        forward_image=inference.get_total_flops(),
        parameters=sum(p.numel() for p in model.parameters()),
        checkpoint_bytes=sum(t.numel() * t.element_size() for t in state.values()),
        batch=batch,
    )
