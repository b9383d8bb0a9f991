"""Model zoo: every family builds and steps; small-image variants keep resolution; ShakeDrop."""

from __future__ import annotations

import contextlib
import copy
import re
import socket
from functools import cache

import pytest
import torch
import torchvision
from ladder import models
from ladder.config import ConfigError, Params
from ladder.model_registry import MODELS
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


# ----------------------------------------------------------------------------------------------
# torchvision's families: each model built for real once (200 classes), the rest on `meta`

TORCHVISION = [name for name in MODELS if name != "mynet"]
RESNETS = [name for name in MODELS if MODELS[name].build == "ladder.models.resnet:build"]
# Per model, a small-image variant whose last stage sees 8x8 of a 64x64 image (README's table).
EIGHT_BY_EIGHT = {
    **{name: {"unstride": 1, "maxpool": False} for name in RESNETS},
    **{name: {"unstride": 3} for name in ("regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf")},
    **{name: {"unstride": 2} for name in ("mobilenet_v3_small", "mobilenet_v3_large")},
    "efficientnet_v2_s": {"unstride": 2},
    "convnext_tiny": {"unstride": 2},
}


class DownloadAttempted(AssertionError):
    pass


@contextlib.contextmanager
def no_downloads():
    """Any attempt at pretrained weights or at the network raises (weights in torch's cache
    would load without the network, hence WeightsEnum too)."""

    def refuse(*args, **kwargs):
        raise DownloadAttempted("a builder tried to fetch weights or open a connection")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(torchvision.models.WeightsEnum, "get_state_dict", refuse)
        mp.setattr(torch.hub, "load_state_dict_from_url", refuse)
        yield


@cache
def real(name: str, seed: int = 0) -> nn.Module:
    """`name` with its default settings and 200 classes, built on the CPU, offline."""
    torch.manual_seed(seed)
    with no_downloads():
        return models.build(model_settings(name=name), num_classes=200, image_size=64)


def on_meta(name: str, num_classes: int = 10, **model) -> nn.Module:
    """Shapes only: no memory, no arithmetic."""
    with torch.device("meta"):
        return models.build(model_settings(name=name, **model), num_classes, 64)


def meta_logits(model: nn.Module, size: int) -> torch.Size:
    model.eval()
    with torch.no_grad():
        return model(torch.empty(2, 3, size, size, device="meta")).shape


def last_stage(sizes: dict) -> tuple[int, int]:
    return sizes.get("layer4") or sizes.get("trunk_output") or sizes["features"]


def test_the_registry_has_the_families_people_use_at_this_size():
    assert set(TORCHVISION) >= {
        "resnet18", "resnet34", "resnet50", "wide_resnet50_2", "resnext50_32x4d",
        "regnet_y_400mf", "mobilenet_v3_small", "mobilenet_v3_large", "convnext_tiny",
    }  # fmt: skip
    assert set(EIGHT_BY_EIGHT) == set(TORCHVISION)


@pytest.mark.parametrize("name", TORCHVISION)
def test_every_model_gives_logits_at_64_and_32_and_takes_a_step(name):
    model = real(name).eval()
    with torch.no_grad():
        for size in (64, 32):
            logits = model(torch.rand(2, 3, size, size))
            assert logits.shape == (2, 200)
            assert torch.isfinite(logits).all()
    # 10 classes, and a training step's shapes (forward and backward), on `meta`
    model = on_meta(name, num_classes=10)
    assert meta_logits(model, 64) == (2, 10)
    assert meta_logits(model, 32) == (2, 10)
    model.train()
    x = torch.empty(2, 3, 32, 32, device="meta")
    nn.functional.cross_entropy(
        model(x), torch.zeros(2, dtype=torch.long, device="meta")
    ).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", TORCHVISION)
def test_every_model_is_randomly_initialised_offline(name):
    """Built under no_downloads (real() too): a builder asking for weights would raise. Two
    seeds give two different models: nothing was loaded."""
    seed0 = real(name).state_dict()
    torch.manual_seed(1)
    with no_downloads():
        seed1 = models.build(model_settings(name=name), num_classes=200, image_size=64)
    first_conv = next(k for k, v in seed0.items() if v.dim() == 4)
    assert not torch.equal(seed0[first_conv], seed1.state_dict()[first_conv])


def test_no_downloads_catches_a_builder_that_asks_for_weights():
    """The guard above can fail: torchvision's own path to pretrained weights is refused."""
    with no_downloads(), pytest.raises(DownloadAttempted):
        torchvision.models.mobilenet_v3_small(weights="DEFAULT")


@pytest.mark.parametrize("name", [n for n in TORCHVISION if "unstride" in MODELS[n].settings])
def test_the_allowed_unstride_values_are_exactly_those_that_run(name):
    """Every value the entry allows builds and runs at 64x64 and 32x32 (the largest also
    without the max-pool where the model has one); every other value up to two past the last
    either splits a block's branches (the forward pass fails on shapes) or is more halvings
    than the model has."""
    allowed = MODELS[name].unstride
    base = on_meta(name)
    works = []
    for n in range(max(allowed) + 3):
        model = copy.deepcopy(base)
        with contextlib.suppress(RuntimeError, ValueError):
            small_image.unstride(model, n)
            meta_logits(model, 64)
            works.append(n)
        if n in allowed:
            assert meta_logits(model, 32) == (2, 10)
        if n == allowed[-1]:  # the builder applies the setting as unstride() does
            built = on_meta(name, unstride=n)
            assert models.feature_sizes(built, 64) == models.feature_sizes(model, 64)
            if "maxpool" in MODELS[name].settings:  # before the first block: any n or none
                small_image.drop_maxpool(model)
                assert meta_logits(model, 64) == meta_logits(model, 32) == (2, 10)
    assert tuple(works) == allowed


@pytest.mark.parametrize("name", TORCHVISION)
def test_small_image_variants_end_at_eight_by_eight(name):
    plain = models.feature_sizes(on_meta(name), 64)
    small = models.feature_sizes(on_meta(name, **EIGHT_BY_EIGHT[name]), 64)
    assert last_stage(plain) == (2, 2)
    assert last_stage(small) == (8, 8)


def test_maxpool_false_drops_the_max_pool_of_every_resnet():
    for name in RESNETS:
        plain, small = on_meta(name), on_meta(name, maxpool=False)
        assert [n for n, m in plain.named_modules() if isinstance(m, nn.MaxPool2d)] == ["maxpool"]
        assert not any(isinstance(m, nn.MaxPool2d) for m in small.modules())
        assert models.feature_sizes(plain, 64)["layer1"] == (16, 16)
        assert models.feature_sizes(small, 64)["layer1"] == (32, 32)


def test_unstride_undoes_each_family_s_halvings_in_order():
    assert small_image.unstride(on_meta("resnet50"), 3) == [
        "conv1",
        "layer2.0.conv2",  # a Bottleneck strides in its 3x3 conv
        "layer2.0.downsample.0",
    ]
    assert small_image.unstride(on_meta("regnet_y_400mf"), 3) == [
        "stem.0",
        "trunk_output.block1.block1-0.proj.0",
        "trunk_output.block1.block1-0.f.b.0",
    ]
    assert small_image.unstride(on_meta("mobilenet_v3_large"), 2) == [
        "features.0.0",
        "features.2.block.1.0",
    ]
    # ConvNeXt's 4x4 stride-4 stem is two halvings, then the 2x2 stride-2 downsamplings
    assert small_image.unstride(on_meta("convnext_tiny"), 3) == [
        "features.0.0",
        "features.0.0",
        "features.2.1",
    ]


def test_convnext_s_patchify_convolutions_stay_patchify():
    torch.manual_seed(0)
    model = models.build(model_settings(name="convnext_tiny"), 10, 64)
    stem = model.features[0][0]
    weight = stem.weight.detach().clone()
    small_image.unstride(model, 1)
    assert (stem.kernel_size, stem.stride, stem.padding) == ((2, 2), (2, 2), (0, 0))
    assert torch.equal(stem.weight, weight[:, :, :2, :2])  # the corner of its own init
    assert stem.weight.requires_grad
    small_image.unstride(model, 3)  # two more: the stem's second halving, the first downsampling
    assert (stem.kernel_size, stem.stride) == ((1, 1), (1, 1))
    down = model.features[2][1]
    assert (down.kernel_size, down.stride, down.weight.shape[2:]) == ((1, 1), (1, 1), (1, 1))
    sizes = {n: models.feature_sizes(on_meta("convnext_tiny", unstride=n), 64) for n in (1, 2, 5)}
    assert sizes[1]["features.0"] == (32, 32)
    assert sizes[2]["features.0"] == (64, 64)
    assert sizes[5]["features"] == (64, 64)


@pytest.mark.parametrize("name", TORCHVISION)
def test_dropout_sits_before_the_last_linear_layer(name):
    modules = list(on_meta(name, dropout=0.3).modules())
    last_linear = max(i for i, m in enumerate(modules) if isinstance(m, nn.Linear))
    before = [m for m in modules[:last_linear] if isinstance(m, nn.Dropout)]
    assert before
    assert before[-1].p == 0.3
    # no dropout at 0, not even the family's default (torchvision's 0.2 for MobileNetV3)
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in on_meta(name).modules())


def test_stochastic_depth_ends_each_bottleneck_s_branch():
    model = on_meta("resnet50", stochastic_depth=0.4)
    found = [(n, m.p) for n, m in model.named_modules() if isinstance(m, StochasticDepth)]
    blocks = [
        (stage, i) for stage, n in zip(range(1, 5), (3, 4, 6, 3), strict=True) for i in range(n)
    ]
    assert [n for n, _ in found] == [f"layer{s}.{i}.bn3.1" for s, i in blocks]
    assert [p for _, p in found] == pytest.approx([0.4 * i / 16 for i in range(16)])


def test_stochastic_depth_in_convnext_follows_the_resnets_rule():
    from torchvision.models.convnext import CNBlock

    def rates(model):
        return [b.stochastic_depth.p for b in model.modules() if isinstance(b, CNBlock)]

    assert rates(on_meta("convnext_tiny")) == [0.0] * 18  # torchvision's default 0.1 is off
    model = on_meta("convnext_tiny", stochastic_depth=0.4)
    assert rates(model) == pytest.approx([0.4 * i / 18 for i in range(18)])
    assert all(b.stochastic_depth.mode == "row" for b in model.modules() if isinstance(b, CNBlock))


def test_shakedrop_ends_each_bottleneck_s_branch():
    model = on_meta("resnext50_32x4d", shakedrop={"p_drop": 0.5, "stages": [4]})
    holders = [name for name, m in model.named_modules() if isinstance(m, ShakeDrop)]
    assert holders == [f"layer4.{i}.bn3.1" for i in range(3)]


@pytest.mark.parametrize(
    ("model", "error"),
    [
        (
            {"name": "resnet50", "unstride": 2},
            "model.unstride: 2 would split a residual block's two branches; resnet50 allows "
            "0, 1, 3, 5, 7",
        ),
        (
            {"name": "regnet_y_400mf", "unstride": 4},
            "model.unstride: 4 would split a residual block's two branches; regnet_y_400mf "
            "allows 0, 1, 3, 5, 7, 9",
        ),
        (
            {"name": "resnet34", "unstride": 8},
            "model.unstride: 8 is more halvings of resolution than the model has; resnet34 allows",
        ),
        (
            {"name": "convnext_tiny", "unstride": 6},
            "model.unstride: 6 is more halvings of resolution than the model has; convnext_tiny "
            "allows 0..5",
        ),
        ({"name": "convnext_tiny", "maxpool": False}, "model.maxpool: does not apply to model"),
        ({"name": "regnet_y_400mf", "stochastic_depth": 0.1}, "model.stochastic_depth: does not"),
        ({"name": "mobilenet_v3_large", "stochastic_depth": 0.1}, "model.stochastic_depth: does"),
        (
            {"name": "convnext_tiny", "shakedrop": {"p_drop": 0.5}},
            "model.shakedrop: does not apply to model 'convnext_tiny'",
        ),
        (
            {"name": "wide_resnet50_2", "shakedrop": {"p_drop": 0.5, "stages": [5]}},
            "model.shakedrop.stages: [5] - wide_resnet50_2 has stages 1..4",
        ),
    ],
    ids=lambda v: v["name"] if isinstance(v, dict) else None,
)
def test_a_bad_model_setting_is_named(model, error):
    with pytest.raises(ConfigError, match=re.escape(error)):
        model_settings(**model)
