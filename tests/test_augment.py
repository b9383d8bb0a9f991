"""Batched augmentations draw, per image, from the same distributions as torchvision's transforms.

Each test samples many images through our batch version and through the torchvision transform
applied image by image, measures the random parameter each image got, and compares the two
samples with a two-sample test (seeded, so the outcome is fixed). A power check shows the tests
do reject a slightly different distribution.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ladder import augment, augment_registry
from ladder.augments import (
    affine,
    autoaugment,
    blur,
    erase,
    hflip,
    randaugment,
    rotate,
    solarize,
    translate,
    trivialaugment,
)
from scipy import stats
from torchvision.transforms import v2

N = 3000
SIZE = 32
ALPHA = 1e-3  # fixed seeds: a p-value below this would be a real difference, not bad luck


def settings(**ops) -> dict:
    """Every op of the registry off, but those given."""
    base = {op.name: 0.0 if op.bare else {"p": 0.0} for op in augment_registry.OPS}
    return {**base, **ops}


def ours(batch: torch.Tensor, s: dict, seed: int = 0) -> torch.Tensor:
    return augment.Augment(s)(batch, torch.Generator().manual_seed(seed))


def theirs(batch: torch.Tensor, transform, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.stack([transform(img) for img in batch]).float() / 255


def marker_images(n: int = N, block: int = 3, offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """uint8 images, black but for a white block (centred, or moved by `offset`)."""
    x = torch.zeros(n, 3, SIZE, SIZE, dtype=torch.uint8)
    c = SIZE // 2 - block // 2
    x[:, :, c + offset[1] : c + offset[1] + block, c + offset[0] : c + offset[0] + block] = 255
    return x


def centroids(x: torch.Tensor) -> np.ndarray:
    """(n, 2) centre of mass (x, y) of each image's brightness."""
    w = x[:, 0].double()
    ys, xs = torch.meshgrid(torch.arange(SIZE).double(), torch.arange(SIZE).double(), indexing="ij")
    total = w.sum(dim=(1, 2))
    return torch.stack(
        [(w * xs).sum(dim=(1, 2)) / total, (w * ys).sum(dim=(1, 2)) / total], 1
    ).numpy()


def chi2_same(a: np.ndarray, b: np.ndarray) -> float:
    """p-value that two samples of discrete values come from the same distribution."""
    values = np.union1d(a, b)
    table = np.array([[np.sum(a == v) for v in values], [np.sum(b == v) for v in values]])
    return stats.chi2_contingency(table[:, table.sum(0) > 0]).pvalue


def test_every_image_draws_its_own_parameters():
    s = settings(hflip=0.5, translate={"p": 1.0, "max": 0.25}, rotate={"p": 1.0, "degrees": 30})
    out = ours(marker_images(64, offset=(5, 2)), s)
    positions = {tuple(np.round(c, 1)) for c in centroids(out)}
    assert len(positions) > 32  # one draw for the whole batch would give a single position


def test_hflip_matches_random_horizontal_flip():
    x = marker_images(offset=(6, 0))
    a = centroids(ours(x, settings(hflip=0.3)))[:, 0] < SIZE / 2
    b = centroids(theirs(x, v2.RandomHorizontalFlip(0.3)))[:, 0] < SIZE / 2
    assert stats.binomtest(int(a.sum()), N, 0.3).pvalue > ALPHA
    assert chi2_same(a, b) > ALPHA


def test_translate_matches_random_apply_random_affine():
    x = marker_images()
    tv = v2.RandomApply([v2.RandomAffine(degrees=0, translate=(0.125, 0.125))], p=0.6)
    a = np.round(centroids(ours(x, settings(translate={"p": 0.6, "max": 0.125}))) - SIZE / 2 + 0.5)
    b = np.round(centroids(theirs(x, tv)) - SIZE / 2 + 0.5)
    assert np.all(np.abs(a) <= 4)  # round(U(-4, 4)) pixels for 32 * 1/8
    for axis in (0, 1):
        assert chi2_same(a[:, axis], b[:, axis]) > ALPHA
    assert chi2_same((a == 0).all(1), (b == 0).all(1)) > ALPHA  # how often nothing moved
    # power: a 1/10 shift is told apart from 1/8
    narrower = np.round(
        centroids(theirs(x, v2.RandomApply([v2.RandomAffine(0, translate=(0.1, 0.1))], p=0.6)))
        - SIZE / 2
        + 0.5
    )
    assert chi2_same(a[:, 0], narrower[:, 0]) < ALPHA


def _angles(x: torch.Tensor) -> np.ndarray:
    c = centroids(x) - (SIZE / 2 - 0.5)
    return np.degrees(np.arctan2(-c[:, 1], c[:, 0]))  # counter-clockwise positive, y down


def test_rotate_matches_random_apply_random_affine():
    x = marker_images(offset=(10, 0))
    tv = v2.RandomApply([v2.RandomAffine(degrees=20)], p=0.6)
    a = _angles(ours(x, settings(rotate={"p": 0.6, "degrees": 20})))
    b = _angles(theirs(x, tv))
    assert np.abs(a).max() < 27  # U(-20, 20) plus nearest-neighbour quantisation at radius 10
    assert stats.ks_2samp(a, b).pvalue > ALPHA
    assert chi2_same(np.abs(a) < 0.5, np.abs(b) < 0.5) > ALPHA
    wider = _angles(theirs(x, v2.RandomApply([v2.RandomAffine(degrees=25)], p=0.6)))
    assert stats.ks_2samp(a, wider).pvalue < ALPHA


def test_rotation_direction_and_resampling_equal_torchvision_exactly():
    img = torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8)
    x = img.float() / 255
    for angle, shift in ((17.0, (0.0, 0.0)), (-8.0, (3.0, -2.0))):
        expected = v2.functional.affine(
            x[0],
            angle=angle,
            translate=list(shift),
            scale=1.0,
            shear=[0.0, 0.0],
            interpolation=v2.InterpolationMode.NEAREST,
        )
        got = affine.affine(x, torch.tensor([angle]), torch.tensor([shift]))[0]
        assert torch.equal(got, expected)


def test_blur_matches_random_apply_gaussian_blur():
    impulse = torch.zeros(N, 3, SIZE, SIZE, dtype=torch.uint8)
    impulse[:, :, SIZE // 2, SIZE // 2] = 255
    tv = v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.3)
    s = settings(blur={"p": 0.3, "kernel": 3, "sigma": [0.1, 2.0]})
    # the centre keeps k(0)^2 of the impulse: a monotone function of sigma
    a = ours(impulse, s)[:, 0, SIZE // 2, SIZE // 2].numpy()
    b = theirs(impulse, tv)[:, 0, SIZE // 2, SIZE // 2].numpy()
    assert stats.ks_2samp(a, b).pvalue > ALPHA
    assert stats.binomtest(int((a < 1).sum()), N, 0.3).pvalue > ALPHA
    shifted = theirs(impulse, v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.5))], p=0.3))
    assert stats.ks_2samp(a, shifted[:, 0, SIZE // 2, SIZE // 2].numpy()).pvalue < ALPHA


def test_fixed_sigma_blur_equals_torchvision():
    img = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    got = ours(img, settings(blur={"p": 1.0, "kernel": 3, "sigma": 0.6}))
    expected = v2.functional.gaussian_blur(img.float() / 255, kernel_size=[3, 3], sigma=[0.6, 0.6])
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("threshold", [0.4, 0.4 / 255])
def test_solarize_matches_random_solarize(threshold):
    rng = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (N, 3, 4, 4), dtype=torch.uint8, generator=rng)
    a = ours(x, settings(solarize={"p": 0.5, "threshold": threshold}))
    b = (
        theirs(x.float() / 255, v2.RandomSolarize(threshold, p=0.5)) * 255
    )  # float reading of torchvision
    changed_a = (a != x.float() / 255).flatten(1).any(1).numpy()
    changed_b = (b != x.float() / 255).flatten(1).any(1).numpy()
    assert chi2_same(changed_a, changed_b) > ALPHA
    # where applied, exactly the pixels >= threshold are inverted
    applied = torch.from_numpy(changed_a)
    xf = x[applied].float() / 255
    assert torch.equal(a[applied], torch.where(xf >= threshold, 1 - xf, xf))


def test_seed_threshold_reading_inverts_every_pixel_from_one_up():
    """0.4 on the 0-255 scale (the seed's PIL images) = 0.4/255 here: every pixel >= 1 flips."""
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    out = ours(x, settings(solarize={"p": 1.0, "threshold": 0.4 / 255})) * 255
    expected = torch.where(x >= 1, 255 - x.float(), x.float())
    assert torch.allclose(out, expected, atol=1e-4)


ERASE = {"p": 1.0, "scale": [0.02, 0.33], "ratio": [0.3, 3.3], "value": 0.0}


def erased_boxes(x: torch.Tensor) -> np.ndarray:
    """(n, 4) top, left, height, width of the zeroed box in each all-white image (zeros: none)."""
    out = []
    for img in x[:, 0] == 0:
        rows, cols = img.any(1).nonzero()[:, 0], img.any(0).nonzero()[:, 0]
        if len(rows) == 0:
            out.append((0, 0, 0, 0))
            continue
        out.append((rows[0], cols[0], len(rows), len(cols)))
    return np.array(out, dtype=float)


@pytest.mark.parametrize(
    ("scale", "ratio"),
    [
        ([0.02, 0.33], [0.3, 3.3]),  # torchvision's defaults
        ([0.02, 0.33], [0.5, 1.0]),
        ([0.5, 0.6], [1.0, 1.0]),  # large squares: a few positions each, edges included
        ([0.5, 0.9], [0.3, 3.3]),  # tries that do not fit: most images need several
    ],
)
def test_erase_matches_random_erasing(scale, ratio):
    white = torch.full((N, 3, SIZE, SIZE), 255, dtype=torch.uint8)
    a = erased_boxes(ours(white, settings(erase=ERASE | {"scale": scale, "ratio": ratio})))
    b = erased_boxes(theirs(white, v2.RandomErasing(1.0, tuple(scale), tuple(ratio), value=0)))
    for column in range(4):  # top, left, height, width: each the same distribution
        assert chi2_same(a[:, column], b[:, column]) > ALPHA, column
    # the boxes are filled rectangles: area = height x width
    erased = (ours(white[:64], settings(erase=ERASE))[:, 0] == 0).sum((1, 2)).numpy()
    boxes = erased_boxes(ours(white[:64], settings(erase=ERASE)))
    assert np.array_equal(erased, boxes[:, 2] * boxes[:, 3])


def test_erase_probability_and_the_test_s_power():
    white = torch.full((N, 3, SIZE, SIZE), 255, dtype=torch.uint8)
    a = erased_boxes(ours(white, settings(erase=ERASE | {"p": 0.4})))
    assert stats.binomtest(int((a[:, 2] > 0).sum()), N, 0.4).pvalue > ALPHA
    # A slightly larger box is told apart from torchvision's
    b = erased_boxes(theirs(white, v2.RandomErasing(1.0, (0.02, 0.4), value=0)))
    c = erased_boxes(ours(white, settings(erase=ERASE)))
    assert chi2_same(c[:, 2] * c[:, 3], b[:, 2] * b[:, 3]) < ALPHA


def test_identity_settings_only_rescale():
    x = torch.randint(0, 256, (8, 3, SIZE, SIZE), dtype=torch.uint8)
    assert augment.Augment(settings()).is_identity
    assert torch.equal(ours(x, settings()), x.float() / 255)


def reference_pipeline(images: torch.Tensor, s: dict, g: torch.Generator) -> torch.Tensor:
    """The pipeline as augment.py spelled it out before the op table: the op functions called
    directly, in the order flip, translate, rotate, blur, solarize, the policies, erase."""
    x = images.float().div_(255)
    n = len(x)
    if s["hflip"] > 0:
        x = hflip.hflip(x, s["hflip"], g)
    if s["translate"]["p"] > 0:
        t = s["translate"]
        shift = translate.translate_params(n, x.shape[-1], t["p"], t["max"], g, x.device)
        x = affine.affine(x, torch.zeros(n), shift)
    if s["rotate"]["p"] > 0:
        angle = rotate.rotate_params(n, s["rotate"]["p"], s["rotate"]["degrees"], g, x.device)
        x = affine.affine(x, angle, torch.zeros(n, 2))
    if s["blur"]["p"] > 0:
        x = blur.blur(x, s["blur"]["p"], s["blur"]["kernel"], s["blur"]["sigma"], g)
    if s["solarize"]["p"] > 0:
        x = solarize.solarize(x, s["solarize"]["p"], s["solarize"]["threshold"], g)
    for policy in (randaugment, trivialaugment, autoaugment):
        setting = s[policy.__name__.rpartition(".")[2]]
        if setting["p"] > 0:
            x = policy.apply(x, setting, g)
    if s["erase"]["p"] > 0:
        x = erase.erase(x, s["erase"], g)
    return x


EXACT = {
    "all": settings(
        hflip=0.5,
        translate={"p": 0.7, "max": 0.125},
        rotate={"p": 0.6, "degrees": 20.0},
        blur={"p": 0.5, "kernel": 3, "sigma": [0.1, 2.0]},
        solarize={"p": 0.5, "threshold": 0.4},
        randaugment={"p": 0.5, "ops": 2, "magnitude": 9, "bins": 31},
        trivialaugment={"p": 0.5, "bins": 31},
        autoaugment={"p": 0.5, "policy": "imagenet"},
        erase=ERASE | {"p": 0.5},
    ),
    "some": settings(
        rotate={"p": 1.0, "degrees": 10.0}, blur={"p": 0.3, "kernel": 5, "sigma": 0.7}
    ),
    "flip_solarize": settings(hflip=1.0, solarize={"p": 1.0, "threshold": 0.4 / 255}),
    "none": settings(),
}


@pytest.mark.parametrize("name", EXACT)
def test_pipeline_equals_the_op_functions_in_order_bit_for_bit(name):
    x = torch.randint(
        0, 256, (16, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(7)
    )
    ours_g, ref_g = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    pipeline = augment.Augment(EXACT[name])
    for _ in range(2):  # and the generator is left where the reference leaves it
        assert torch.equal(pipeline(x, ours_g), reference_pipeline(x, EXACT[name], ref_g))
    assert torch.equal(ours_g.get_state(), ref_g.get_state())
    assert pipeline.is_identity == (name == "none")
