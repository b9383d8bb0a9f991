"""Running a model over a split: precision and batching shared by training and evaluation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from ladder.loader import DeviceSplit


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the tensor cores' format); full fp32 on the CPU reference path."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(
    model: nn.Module,
    split: DeviceSplit,
    transform: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 500,
) -> torch.Tensor:
    """float32 logits (N, classes) of `model`, in eval mode, on `transform(images)` of the split."""
    was_training = model.training
    model.eval()
    out = []
    with autocast(split.device):
        for images, _ in split.batches(batch_size):
            out.append(model(transform(images)).float())
    model.train(was_training)
    return torch.cat(out)
