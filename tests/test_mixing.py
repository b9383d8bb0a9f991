"""Batch mixing (ladder.mixing) does what torchvision.transforms.v2's MixUp and CutMix do.

Given the same draw (lambda, box), images and soft targets equal torchvision's bit for bit; the
draws themselves (lambda, the clipped box's share, which kind, how often) come from the same
distributions as torchvision's, by two-sample tests with fixed seeds, and a power check shows
the tests reject a slightly different alpha.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ladder import config, mixing, train
from scipy import stats
from torchvision.transforms import v2

N = 4000  # draws per sample
ALPHA = 1e-3  # fixed seeds: a p-value below this would be a real difference, not bad luck
SIZE = 32
CLASSES = 10


def mixer(**mix) -> mixing.Mixer:
    resolved = config.Params.from_dict({"experiments": {"x": {"mix": mix}}}).experiments["x"]
    return mixing.Mixer(resolved.train["mix"], CLASSES)


def ours(m: mixing.Mixer, n: int = N, seed: int = 7) -> list[mixing.Draw]:
    return [m.draw(seed, step, SIZE, SIZE) for step in range(1, n + 1)]


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


# ----------------------------------------------------------------------------------------------
# The same draw gives what torchvision gives


def test_mixup_images_and_targets_equal_torchvision_for_the_same_lambda():
    x, y = batch()
    draw = mixing.Draw("mixup", 0.3)
    got_x, got_t = mixer(mixup_alpha=0.2)(x.clone(), y, draw)
    t = v2.MixUp(alpha=0.2, num_classes=CLASSES)
    params = {"lam": 0.3, "labels": y, "batch_size": len(y)}
    assert torch.equal(got_x, t.transform(x.clone(), params))
    assert torch.equal(got_t, t.transform(y, params))
    assert torch.allclose(got_t.sum(1), torch.ones(len(y)))


def test_cutmix_images_and_targets_equal_torchvision_for_the_same_box():
    x, y = batch()
    draw = mixing.cutmix_draw(0.6, np.random.default_rng(3), SIZE, SIZE)
    got_x, got_t = mixer(cutmix_alpha=1.0)(x.clone(), y, draw)
    t = v2.CutMix(alpha=1.0, num_classes=CLASSES)
    params = {"box": draw.box, "lam_adjusted": draw.lam, "labels": y, "batch_size": len(y)}
    assert torch.equal(got_x, t.transform(x.clone(), params))
    assert torch.equal(got_t, t.transform(y, params))
    x1, y1, x2, y2 = draw.box
    assert draw.lam == pytest.approx(1 - (x2 - x1) * (y2 - y1) / SIZE**2)
    assert 0 < draw.lam < 1  # a box that is neither empty nor the whole image: a real test


def test_an_unmixed_batch_keeps_its_images_and_one_hot_targets():
    x, y = batch()
    got_x, got_t = mixer(mixup_alpha=0.2, p=0.5)(x, y, mixing.Draw())
    assert torch.equal(got_x, x)
    assert torch.equal(got_t.argmax(1), y)
    assert torch.equal(got_t.sum(1), torch.ones(len(y)))


# ----------------------------------------------------------------------------------------------
# The draws come from torchvision's distributions


def theirs_mixup(alpha: float, n: int = N) -> np.ndarray:
    torch.manual_seed(1)
    t = v2.MixUp(alpha=alpha, num_classes=CLASSES)
    return np.array([t.make_params([]) ["lam"] for _ in range(n)])  # fmt: skip


def theirs_cutmix(alpha: float, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's clipped-box weights and box centres' x (from the boxes it makes)."""
    torch.manual_seed(2)
    t = v2.CutMix(alpha=alpha, num_classes=CLASSES)
    image = torch.zeros(1, 3, SIZE, SIZE)
    params = [t.make_params([image]) for _ in range(n)]
    return (
        np.array([p["lam_adjusted"] for p in params]),
        np.array([p["box"][2] - p["box"][0] for p in params]),
    )


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_lambda_follows_torchvisions_beta(alpha):
    lam = np.array([d.lam for d in ours(mixer(mixup_alpha=alpha))])
    assert stats.ks_2samp(lam, theirs_mixup(alpha)).pvalue > ALPHA


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_cutmix_box_areas_and_widths_follow_torchvisions(alpha):
    draws = ours(mixer(cutmix_alpha=alpha))
    lam, widths = theirs_cutmix(alpha)
    assert stats.ks_2samp([d.lam for d in draws], lam).pvalue > ALPHA
    ours_widths = np.array([d.box[2] - d.box[0] for d in draws])
    table = [[np.sum(w == v) for v in range(SIZE + 1)] for w in (ours_widths, widths)]
    table = np.array(table)[:, np.array(table).sum(0) > 0]
    assert stats.chi2_contingency(table).pvalue > ALPHA


def test_the_tests_reject_a_slightly_different_alpha():
    lam = np.array([d.lam for d in ours(mixer(mixup_alpha=0.2))])
    assert stats.ks_2samp(lam, theirs_mixup(0.3)).pvalue < ALPHA
    cut = [d.lam for d in ours(mixer(cutmix_alpha=1.0))]
    assert stats.ks_2samp(cut, theirs_cutmix(1.5)[0]).pvalue < ALPHA


def test_p_and_switch_p_decide_how_often_and_which():
    draws = ours(mixer(mixup_alpha=0.2, cutmix_alpha=1.0, p=0.6, switch_p=0.25))
    kinds = [d.kind for d in draws]
    mixed = sum(k != "none" for k in kinds)
    assert stats.binomtest(mixed, N, 0.6).pvalue > ALPHA
    assert stats.binomtest(kinds.count("cutmix"), mixed, 0.25).pvalue > ALPHA
    assert {d.kind for d in ours(mixer(cutmix_alpha=1.0), 200)} == {"cutmix"}
    assert {d.kind for d in ours(mixer(mixup_alpha=1.0), 200)} == {"mixup"}


def test_draws_depend_on_the_seed_and_step_only():
    m = mixer(mixup_alpha=0.2, cutmix_alpha=1.0)
    assert m.draw(5, 17, SIZE, SIZE) == m.draw(5, 17, SIZE, SIZE)  # resumed mid-epoch: the same
    assert len({m.draw(5, s, SIZE, SIZE) for s in range(1, 50)}) == 49
    assert m.draw(5, 17, SIZE, SIZE) != m.draw(6, 17, SIZE, SIZE)


# ----------------------------------------------------------------------------------------------
# In training: loss with label smoothing, accuracy


def test_soft_targets_compose_with_label_smoothing_as_timm_mixes_smoothed_targets():
    x, y = batch()
    lam, eps = 0.3, 0.1
    _, targets = mixer(mixup_alpha=0.2)(x, y, mixing.Draw("mixup", lam))
    logits = torch.randn(len(y), CLASSES, generator=torch.Generator().manual_seed(4))
    loss = torch.nn.CrossEntropyLoss(label_smoothing=eps)(logits, targets)

    def smooth(labels):  # timm's mixup_target: one-hot with off = eps / C, on = 1 - eps + off
        off = eps / CLASSES
        return torch.full((len(labels), CLASSES), off).scatter_(1, labels[:, None], 1 - eps + off)

    timm = lam * smooth(y) + (1 - lam) * smooth(y.roll(1, 0))
    expected = -(timm * logits.log_softmax(1)).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def learner(**mix) -> train.Learner:
    resolved = config.Params.from_dict(
        {"experiments": {"x": {"model": {"name": "mynet", "blocks": 1, "width": 8},
                               "augment": {"hflip": 0.0}, "mix": mix}}}
    ).experiments["x"].train  # fmt: skip
    norm = {"mean": [0.5] * 3, "std": [0.25] * 3}
    return train.Learner.build(resolved, CLASSES, SIZE, 4, norm, torch.device("cpu"))


@pytest.mark.parametrize("lam", [0.3, 0.7])
def test_train_accuracy_under_mixing_counts_the_label_with_the_larger_weight(lam):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    ln = learner(mixup_alpha=1.0)
    draw = mixing.Draw("mixup", lam)
    # What the step's forward pass predicts (the mixed images do not depend on the labels) ...
    x, _ = ln.mixer(ln.norm(ln.augmenter(images, g)), torch.zeros(64, dtype=torch.long), draw)
    predicted = copy.deepcopy(ln.model)(x).argmax(1)
    # ... made the label of the larger weight: its own when lam > 0.5, its partner's otherwise.
    labels = predicted if lam > 0.5 else predicted.roll(-1, 0)
    _, correct = ln.step(images, labels, g, draw)
    assert correct.item() == 64
    assert (predicted == labels.roll(1 if lam > 0.5 else -1, 0)).sum() < 64  # the other: fewer


def test_an_experiment_that_does_not_mix_builds_no_mixer():
    assert learner().mixer is None
    assert learner(mixup_alpha=0.2, p=0.0).mixer is None
    assert learner(cutmix_alpha=1.0).mixer is not None


# ----------------------------------------------------------------------------------------------
# Settings


def resolved_mix(**mix) -> dict:
    return config.Params.from_dict({"experiments": {"x": {"mix": mix}}}).experiments["x"].train


def test_settings_that_do_not_apply_are_pruned_so_editing_them_reruns_nothing():
    off = resolved_mix()["mix"]
    assert (
        off == resolved_mix(p=0.3, switch_p=0.9)["mix"] == resolved_mix(mixup_alpha=0.4, p=0)["mix"]
    )
    assert resolved_mix(cutmix_alpha=1, switch_p=0.1)["mix"] == resolved_mix(cutmix_alpha=1)["mix"]
    both = resolved_mix(cutmix_alpha=1, mixup_alpha=0.2)["mix"]
    assert both["switch_p"] == 0.5
    assert both["p"] == 1.0


def test_the_code_record_names_mixing_only_for_experiments_that_mix():
    assert "mix" not in config.code_record(resolved_mix())
    recorded = config.code_record(resolved_mix(mixup_alpha=0.2))
    assert list(recorded["mix"]["files"]) == ["workflow/ladder/mixing.py"]


@pytest.mark.parametrize(
    ("mix", "key"),
    [
        ({"mixup_alpha": -0.1}, "mix.mixup_alpha"),
        ({"cutmix_alpha": "1"}, "mix.cutmix_alpha"),
        ({"cutmix_alpha": 1.0, "p": 1.5}, "mix.p"),
        ({"cutmix_alpha": 1.0, "switch_p": -1}, "mix.switch_p"),
        ({"cutmx_alpha": 1.0}, "mix"),
    ],
)
def test_a_bad_mix_value_is_refused_with_its_key(mix, key):
    with pytest.raises(config.ConfigError, match=rf"experiments\.x\.{key}"):
        resolved_mix(**mix)
