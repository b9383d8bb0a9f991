"""ShakeDrop (Yamada et al., "ShakeDrop Regularization for Deep Residual Learning", 2018).

On a residual branch F(x), per image: with probability 1 - p_drop the branch passes unchanged;
otherwise the forward pass scales it by alpha ~ U[-1, 1] and the backward pass by beta ~ U[0, 1].
At evaluation the branch is scaled by the expectation, E[b + alpha (1 - b)] = 1 - p_drop.
"""

from __future__ import annotations

import torch
from torch import nn


class _ShakeDropFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gate, alpha, beta):
        ctx.save_for_backward(gate, beta)
        return x * (gate + alpha * (1 - gate))

    @staticmethod
    def backward(ctx, grad):
        gate, beta = ctx.saved_tensors
        return grad * (gate + beta * (1 - gate)), None, None, None


class ShakeDrop(nn.Module):
    def __init__(self, p_drop: float):
        super().__init__()
        self.p_drop = p_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x * (1.0 - self.p_drop)
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        gate = (torch.rand(shape, device=x.device) >= self.p_drop).to(x.dtype)
        alpha = torch.empty(shape, device=x.device, dtype=x.dtype).uniform_(-1, 1)
        beta = torch.rand(shape, device=x.device, dtype=x.dtype)
        return _ShakeDropFunction.apply(x, gate, alpha, beta)

    def extra_repr(self) -> str:
        return f"p_drop={self.p_drop}"


def add_to_efficientnet(model: nn.Module, p_drop: float, stages: list[int]) -> int:
    """Put ShakeDrop on the residual branch of every block of `stages` (in place of its
    stochastic depth); return how many blocks got it."""
    count = 0
    for stage in stages:
        for block in model.features[stage]:
            if getattr(block, "use_res_connect", False):
                block.stochastic_depth = ShakeDrop(p_drop)
                count += 1
    return count


def branch_end(block: nn.Module) -> str:
    """The last batch norm of a torchvision ResNet block's residual branch, before the
    addition: bn2 in a BasicBlock (ResNet-18/34), bn3 in a Bottleneck (ResNet-50, Wide-ResNet,
    ResNeXt)."""
    return "bn3" if hasattr(block, "bn3") else "bn2"


def add_to_resnet(model: nn.Module, p_drop: float, stages: list[int]) -> int:
    """Scale each block's residual branch (the output of its last batch norm, before the
    addition)."""
    count = 0
    for stage in stages:
        for block in getattr(model, f"layer{stage}"):
            name = branch_end(block)
            setattr(block, name, nn.Sequential(getattr(block, name), ShakeDrop(p_drop)))
            count += 1
    return count
