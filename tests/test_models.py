"""Model zoo: every family builds and steps; small-image variants keep resolution; ShakeDrop."""

from __future__ import annotations

import pytest
import torch
from ladder import models
from ladder.config import ConfigError, Params
from ladder.models import small_image
from ladder.models.shakedrop import ShakeDrop
from torch import nn
from torchvision.ops import StochasticDepth


def model_settings(**model) -> dict:
    return (
        Params.from_dict({"experiments": {"x": {"model": model}}}).experiments["x"].train["model"]
    )


FAMILIES = {
    "mynet_1block": {"name": "mynet", "blocks": 1, "width": 8},
    "mynet": {"name": "mynet", "blocks": 2, "width": 8, "dropout": 0.3},
    "resnet18": {"name": "resnet18"},
    "resnet18_small": {"name": "resnet18", "unstride": 3, "maxpool": False, "dropout": 0.2},
    "resnet18_shakedrop": {"name": "resnet18", "shakedrop": {"p_drop": 0.5, "stages": [3, 4]}},
    "resnet18_stochastic_depth": {"name": "resnet18", "stochastic_depth": 0.2},
    "effnet": {"name": "efficientnet_v2_s", "unstride": 2, "dropout": 0.4},
    "effnet_shakedrop": {
        "name": "efficientnet_v2_s",
        "unstride": 2,
        "shakedrop": {"p_drop": 0.5, "stages": [4]},
    },
}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_builds_and_takes_a_step(family):
    torch.manual_seed(0)
    model = models.build(model_settings(**FAMILIES[family]), num_classes=5, image_size=32)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    model.eval()
    assert model(x).shape == (4, 5)


def test_resnet18_small_image_variant_keeps_resolution():
    plain = models.feature_sizes(models.build(model_settings(name="resnet18"), 200, 64), 64)
    small = models.feature_sizes(
        models.build(model_settings(name="resnet18", unstride=3, maxpool=False), 200, 64), 64
    )
    assert plain["layer4"] == (2, 2)
    # no max-pool, stride 1 in conv1 and in layer2's first conv and shortcut
    assert small == {
        "conv1": (64, 64),
        "layer1": (64, 64),
        "layer2": (64, 64),
        "layer3": (32, 32),
        "layer4": (16, 16),
    }


def test_unstride_changes_exactly_the_first_n_strided_convs():
    model = models.build(model_settings(name="resnet18"), 10, 32)
    assert small_image.unstride(model, 3) == ["conv1", "layer2.0.conv1", "layer2.0.downsample.0"]
    effnet = models.build(model_settings(name="efficientnet_v2_s"), 10, 32)
    assert small_image.unstride(effnet, 2) == ["features.0.0", "features.2.0.block.0.0"]


def test_efficientnet_unstride_two_ends_at_eight_by_eight():
    plain = models.feature_sizes(
        models.build(model_settings(name="efficientnet_v2_s"), 200, 64), 64
    )
    small = models.feature_sizes(
        models.build(model_settings(name="efficientnet_v2_s", unstride=2), 200, 64), 64
    )
    assert plain["features"] == (2, 2)
    assert small["features.0"] == (64, 64)
    assert small["features"] == (8, 8)


def test_efficientnet_head_dropout_is_the_setting():
    model = models.build(model_settings(name="efficientnet_v2_s", dropout=0.7), 10, 32)
    assert model.classifier[0].p == 0.7


def test_shakedrop_sits_on_the_residual_blocks_of_the_chosen_stage():
    model = models.build(
        model_settings(name="efficientnet_v2_s", shakedrop={"p_drop": 0.5, "stages": [4]}), 10, 32
    )
    holders = [name for name, m in model.named_modules() if isinstance(m, ShakeDrop)]
    # stage 4 has 6 blocks; the first changes width and stride, so 5 have a residual branch
    assert holders == [f"features.4.{i}.stochastic_depth" for i in range(1, 6)]


def test_shakedrop_eval_is_its_expectation():
    sd = ShakeDrop(0.3).eval()
    x = torch.randn(8, 4, 5, 5)
    assert torch.allclose(sd(x), 0.7 * x)


def test_shakedrop_training_is_per_image_and_unbiased():
    torch.manual_seed(0)
    sd = ShakeDrop(0.5).train()
    x = torch.ones(20000, 2, 1, 1, requires_grad=True)
    out = sd(x)
    scale = out[:, 0, 0, 0].detach()
    assert torch.equal(out[:, 0], out[:, 1])  # one draw per image, shared by its channels
    kept = scale == 1
    assert 0.47 < kept.float().mean() < 0.53  # gate ~ Bernoulli(1 - p_drop)
    dropped = scale[~kept]
    assert dropped.min() >= -1  # alpha ~ U[-1, 1]
    assert dropped.max() <= 1
    assert dropped.std() > 0.5
    assert abs(scale.mean().item() - 0.5) < 0.02  # E = 1 - p_drop, what eval uses
    out.sum().backward()
    grad = x.grad[:, 0, 0, 0]
    assert torch.equal(grad[kept], torch.ones_like(grad[kept]))
    assert grad[~kept].min() >= 0  # beta ~ U[0, 1] in the backward pass
    assert grad[~kept].max() <= 1
    assert not torch.allclose(grad[~kept], dropped)  # backward draws differ from the forward's


def test_stochastic_depth_rises_linearly_over_the_resnet_s_blocks():
    model = models.build(model_settings(name="resnet18", stochastic_depth=0.4), 10, 32)
    found = [(n, m.p) for n, m in model.named_modules() if isinstance(m, StochasticDepth)]
    blocks = [f"layer{stage}.{i}.bn2.1" for stage in range(1, 5) for i in range(2)]
    assert [n for n, _ in found] == blocks
    assert [p for _, p in found] == pytest.approx([0.4 * i / 8 for i in range(8)])
    assert all(m.mode == "row" for m in model.modules() if isinstance(m, StochasticDepth))


def test_stochastic_depth_drops_whole_branches_per_image_in_training_only():
    torch.manual_seed(0)
    model = models.build(model_settings(name="resnet18", stochastic_depth=0.9), 10, 32)
    block = model.layer4[1]  # the last block: dropped with probability 0.9 * 7/8
    x = torch.randn(64, 512, 4, 4)
    branch = nn.Sequential(block.conv1, block.bn1, block.relu, block.conv2, block.bn2)
    block.train()
    out = branch(x)
    dropped = (out.flatten(1) == 0).all(1)
    assert 0.6 < dropped.float().mean() < 0.95  # 0.79 expected, per image
    kept = out[~dropped]
    assert kept.abs().sum() > 0  # kept branches are scaled up by 1 / (1 - p), not zeroed
    block.eval()
    assert not (branch(x).flatten(1) == 0).all(1).any()  # evaluation keeps every branch


def test_stochastic_depth_applies_to_resnets_only_and_not_with_shakedrop():
    with pytest.raises(ConfigError, match=r"model\.stochastic_depth: does not apply"):
        model_settings(name="mynet", stochastic_depth=0.1)
    with pytest.raises(ConfigError, match=r"model\.stochastic_depth: not with model\.shakedrop"):
        model_settings(
            name="resnet18", stochastic_depth=0.1, shakedrop={"p_drop": 0.5, "stages": [4]}
        )
