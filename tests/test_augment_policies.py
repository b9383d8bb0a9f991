"""The automatic augmentation policies (RandAugment, TrivialAugmentWide, AutoAugment), batched
with every image drawing its own ops, against torchvision.transforms.v2's.

Two halves: each op, image by image, gives what torchvision's op gives the same float image at
the same magnitude (exactly where torchvision's result is a selection or a rounding; to float32
rounding for the blends); and each policy draws its ops and magnitudes per image from the same
distribution as torchvision's transform (the draws recorded on both sides, compared with
chi-squared tests at fixed seeds, with power checks that a slightly different setting is told
apart).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch
from ladder import augment, config
from ladder.augments import autoaugment, policy_ops, randaugment, trivialaugment
from scipy import stats
from torchvision.transforms import v2

SIZE = 32
N = 4000
ALPHA = 1e-3  # fixed seeds: a p-value below this would be a real difference, not bad luck
BLENDS = ("Color", "Contrast", "Sharpness")  # torchvision blends with a scalar factor


def images(n: int, seed: int = 0, size: int = SIZE, channels: int = 3) -> torch.Tensor:
    """Float images in [0, 1] on the uint8 grid, as the pipeline makes them; some of low
    contrast, so that AutoContrast and Equalize have work to do."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, size, size), generator=g).float() / 255
    x[::3] = 0.3 + 0.2 * x[::3]
    return x


def torchvision_op(img: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """torchvision's own op on one image (what its policies call), nearest, zero fill."""
    policy = v2.RandAugment()
    return policy._apply_image_or_video_transform(
        img, name, magnitude, interpolation=v2.InterpolationMode.NEAREST, fill=policy._fill
    )


def every_magnitude() -> list[tuple[str, float]]:
    """(op, signed magnitude) for every op and bin of the three policies' tables, at 32 px."""
    cases = set()
    for cls, bins in ((v2.RandAugment, 31), (v2.TrivialAugmentWide, 31), (v2.AutoAugment, 10)):
        for name, (table, signed) in cls._AUGMENTATION_SPACE.items():
            values = table(bins, SIZE, SIZE)
            for m in [0.0] if values is None else values.float().tolist():
                cases.add((name, m))
                if signed:
                    cases.add((name, -m))
    return sorted(cases)


CASES = every_magnitude()


@pytest.mark.parametrize("gather", [True, False], ids=["by op (CPU)", "whole batch (GPU)"])
def test_every_op_at_every_magnitude_equals_torchvision_s_image_by_image(gather):
    x = images(len(CASES))
    op = torch.tensor([policy_ops.ID[name] for name, _ in CASES])
    magnitude = torch.tensor([m for _, m in CASES])
    ours = policy_ops.apply_ops(x, op, magnitude, gather=gather)
    assert len({name for name, _ in CASES}) == len(policy_ops.NAMES)  # every op is covered
    for i, (name, m) in enumerate(CASES):
        expected = torchvision_op(x[i], name, m)
        if name in BLENDS:  # torchvision blends with a scalar, we per image: float32 rounding
            torch.testing.assert_close(ours[i], expected, atol=2e-7, rtol=0, msg=f"{name} {m}")
        else:
            assert torch.equal(ours[i], expected), f"{name} at {m}"


@pytest.mark.parametrize("size", [(24, 40), (3, 3), (64, 64)], ids=str)
def test_the_ops_equal_torchvision_s_on_other_sizes_and_on_grey_images(size):
    """Non-square and tiny images (the sharpening border, the shear's corner centre), and
    one-channel images (Color leaves them as they are, Contrast uses them as the grey level)."""
    for channels in (3, 1):
        g = torch.Generator().manual_seed(1)
        n = 150
        x = torch.randint(0, 256, (n, channels, *size), generator=g).float() / 255
        picks = torch.randint(len(CASES), (n,), generator=g)
        names = [CASES[i][0] for i in picks]
        m = torch.tensor([CASES[i][1] for i in picks])
        ours = policy_ops.apply_ops(x, torch.tensor([policy_ops.ID[k] for k in names]), m)
        for i, name in enumerate(names):
            expected = torchvision_op(x[i], name, float(m[i]))
            rounding = name in BLENDS and not (channels == 1 and name == "Color")
            torch.testing.assert_close(
                ours[i], expected, atol=2e-7 if rounding else 0, rtol=0, msg=name
            )


def test_an_image_s_result_does_not_depend_on_its_batch_nor_on_the_path():
    x = images(64, seed=3)
    g = torch.Generator().manual_seed(5)
    op = torch.randint(len(policy_ops.NAMES), (64,), generator=g)
    m = torch.rand(64, generator=g) * 0.9
    whole = policy_ops.apply_ops(x, op, m)
    assert torch.equal(whole, policy_ops.apply_ops(x, op, m, gather=False))
    alone = torch.cat(
        [policy_ops.apply_ops(x[i : i + 1], op[i : i + 1], m[i : i + 1]) for i in range(64)]
    )
    assert torch.equal(whole, alone)


# ----------------------------------------------------------------------------------------------
# The draws: ours (recorded from apply_ops' arguments) against torchvision's (recorded from the
# op calls its transform makes), one image at a time on their side.


def our_draws(module, setting: dict, n: int = N, seed: int = 0) -> list[tuple]:
    """Per image, the ops and magnitudes our batched policy gave it (Identity steps dropped,
    as torchvision makes no call for a step it skips)."""
    calls = []
    real = module.apply_ops

    def spy(x, op, magnitude):
        calls.append((op.clone(), magnitude.clone()))
        return real(x, op, magnitude)

    module.apply_ops = spy
    try:
        module.apply(images(n, seed, size=8), setting, torch.Generator().manual_seed(seed))
    finally:
        module.apply_ops = real
    draws = []
    for i in range(n):
        steps = [(policy_ops.NAMES[int(op[i])], round(float(m[i]), 4)) for op, m in calls]
        draws.append(tuple(s for s in steps if s[0] != "Identity" or module is not autoaugment))
    return draws


def their_draws(transform, n: int = N, seed: int = 1, policy=None) -> list[tuple]:
    """Per image, the ops and magnitudes torchvision's transform (whose policy is `policy`,
    itself by default) drew for it; the draws only: the spy does not run the op."""
    policy = transform if policy is None else policy
    steps = []

    def spy(image, name, magnitude, **kwargs):
        steps.append((name, round(float(magnitude), 4)))
        return image

    policy._apply_image_or_video_transform = spy
    torch.manual_seed(seed)
    draws = []
    for img in images(n, seed, size=8):
        steps.clear()
        transform(img)
        draws.append(tuple(steps))
    return draws


def same_distribution(a: list, b: list) -> float:
    """p-value that two samples of hashable outcomes come from one distribution (chi-squared;
    outcomes rarer than 5 expected in the pooled sample lumped together)."""
    pooled = Counter(a) + Counter(b)
    common = [k for k, c in pooled.items() if c >= 10]
    rows = [[Counter(s)[k] for k in common] for s in (a, b)]
    rows = [[*r, len(s) - sum(r)] for r, s in zip(rows, (a, b), strict=True)]
    table = np.array(rows)
    return stats.chi2_contingency(table[:, table.sum(0) > 0]).pvalue


RAND = {"p": 1.0, "ops": 2, "magnitude": 9, "bins": 31}


def test_randaugment_draws_as_torchvision_s():
    ours = our_draws(randaugment, RAND)
    theirs = their_draws(v2.RandAugment(num_ops=2, magnitude=9))
    assert all(len(d) == 2 for d in ours)
    for step in (0, 1):  # each step's op and signed magnitude
        assert same_distribution([d[step] for d in ours], [d[step] for d in theirs]) > ALPHA
    assert same_distribution(ours, theirs) > ALPHA  # and the pairs: independent steps
    # power: magnitude 10 instead of 9 is told apart
    other = their_draws(v2.RandAugment(num_ops=2, magnitude=10))
    assert same_distribution([d[0] for d in ours], [d[0] for d in other]) < ALPHA


def magnitude_bins(draws: list[tuple], transform: type, bins: int) -> list[int]:
    """The magnitude bin of every op drawn whose table is a ramp (one magnitude per bin)."""
    tables = {
        name: table(bins, 8, 8).float()
        for name, (table, _) in transform._AUGMENTATION_SPACE.items()
        if name not in ("Identity", "Posterize", "AutoContrast", "Equalize")
    }
    return [
        int((tables[name] - abs(m)).abs().argmin())
        for d in draws
        for name, m in d
        if name in tables
    ]


def test_trivialaugment_draws_as_torchvision_s():
    ours = our_draws(trivialaugment, {"p": 1.0, "bins": 31})
    theirs = their_draws(v2.TrivialAugmentWide())
    ops = lambda draws: [d[0][0] for d in draws]  # noqa: E731
    assert same_distribution(ops(ours), ops(theirs)) > ALPHA
    assert same_distribution(ours, theirs) > ALPHA
    levels = magnitude_bins(ours, v2.TrivialAugmentWide, 31)
    assert same_distribution(levels, magnitude_bins(theirs, v2.TrivialAugmentWide, 31)) > ALPHA
    assert stats.chisquare(np.bincount(levels, minlength=31)).pvalue > ALPHA  # uniform bins
    # power: a sampler that never draws the top 3 bins is told apart
    assert same_distribution(levels, [b % 28 for b in levels]) < ALPHA


@pytest.mark.parametrize("policy", ["imagenet", "cifar10"])
def test_autoaugment_draws_as_torchvision_s(policy):
    ours = our_draws(autoaugment, {"p": 1.0, "policy": policy})
    theirs = their_draws(v2.AutoAugment(v2.AutoAugmentPolicy(policy)))
    assert same_distribution(ours, theirs) > ALPHA
    # power: the other policy is told apart
    other = "svhn" if policy == "imagenet" else "imagenet"
    assert same_distribution(ours, their_draws(v2.AutoAugment(v2.AutoAugmentPolicy(other)))) < ALPHA


@pytest.mark.parametrize(
    ("module", "setting"),
    [
        (randaugment, RAND | {"p": 0.3}),
        (trivialaugment, {"p": 0.3, "bins": 31}),
        (autoaugment, {"p": 0.3, "policy": "imagenet"}),
    ],
    ids=["randaugment", "trivialaugment", "autoaugment"],
)
def test_p_is_the_share_of_images_that_go_through_the_policy(module, setting):
    """Images left out get Identity at every step; the count of images with any other op is
    binomial with the probability that p and the policy's own Identity draws give."""
    draws = our_draws(module, setting)
    if module is autoaugment:  # skipped steps are dropped: compare with torchvision's share
        policy = v2.AutoAugment()
        theirs = their_draws(v2.RandomApply([policy], p=0.3), policy=policy)
        assert same_distribution([len(d) for d in draws], [len(d) for d in theirs]) > ALPHA
        return
    identity_all = {randaugment: (1 / 14) ** 2, trivialaugment: 1 / 14}[module]
    moved = sum(any(name != "Identity" for name, _ in d) for d in draws)
    assert stats.binomtest(moved, N, 0.3 * (1 - identity_all)).pvalue > ALPHA
    assert stats.binomtest(moved, N, 0.35 * (1 - identity_all)).pvalue < ALPHA  # power


@pytest.mark.parametrize(
    "setting",
    [
        {"randaugment": RAND},
        {"trivialaugment": {"p": 1.0, "bins": 31}},
        {"autoaugment": {"p": 1.0, "policy": "svhn"}},
    ],
    ids=lambda s: next(iter(s)),
)
def test_the_pipeline_and_tta_run_each_policy_per_image_and_reproducibly(setting):
    s = (
        config.Params.from_dict({"experiments": {"e": {"augment": setting}}})
        .experiments["e"]
        .train["augment"]
    )
    pipeline = augment.Augment(s)
    assert not pipeline.is_identity
    x = (images(32, size=16) * 255).to(torch.uint8)
    a = pipeline(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, pipeline(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, pipeline(x, torch.Generator().manual_seed(4)))
    assert len({tuple(img.flatten()[:64].tolist()) for img in a}) > 16  # not one draw for all
    assert a.dtype == torch.float32
    assert a.min() >= 0
    assert a.max() <= 1


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"randaugment": {"p": 1.0, "magnitude": 31}}, "randaugment.magnitude: 31 is not a bin"),
        ({"randaugment": {"p": 1.0, "magnitude": 2.5}}, "randaugment.magnitude: 2.5 is not of"),
        ({"randaugment": {"p": 1.0, "ops": 0}}, "randaugment.ops: 0 is less than"),
        ({"trivialaugment": {"p": 1.0, "bins": 1}}, "trivialaugment.bins: 1 is less than"),
        ({"autoaugment": {"p": 1.0, "policy": "imagnet"}}, "autoaugment.policy: 'imagnet' is not"),
        ({"autoaugment": {"p": 1.5}}, "autoaugment.p: 1.5 is greater than"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_a_bad_policy_setting_is_refused_naming_its_key(setting, message):
    with pytest.raises(config.ConfigError, match=f"experiments.e.augment.{re.escape(message)}"):
        config.Params.from_dict({"experiments": {"e": {"augment": setting}}})
