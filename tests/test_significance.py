"""The report's statistics agree with independent implementations (statsmodels, scipy) and with
published values, decide our issue's acceptance cases as they should, and every statistical
check shows it can fail: the bootstrap's coverage check rejects a too narrow interval, the
replicate rule is told apart from the one-run rule, and the picked-on-test interval from one
that does not redo the pick."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ladder.report import significance as sig
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.proportion import proportion_confint


def pair(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of classifiers a and b, written out: images both get right, only a, only b,
    neither."""
    a = np.repeat([True, True, False, False], [both, a_only, b_only, neither])
    b = np.repeat([True, False, True, False], [both, a_only, b_only, neither])
    return a, b


def run(correct: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """A run that gets exactly `correct` of n images right, at random positions."""
    x = np.zeros(n, dtype=bool)
    x[rng.choice(n, correct, replace=False)] = True
    return x


# ----------------------------------------------------------------------------------------------
# Wilson interval


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
@pytest.mark.parametrize(("correct", "n"), [(0, 20), (1, 29), (50, 100), (5021, 10000), (9, 9)])
def test_wilson_matches_statsmodels(correct, n, confidence):
    low, high = proportion_confint(correct, n, alpha=1 - confidence, method="wilson")
    assert sig.wilson_interval(correct, n, confidence) == pytest.approx((low, high), abs=1e-12)


@pytest.mark.parametrize(
    ("correct", "n", "expected"),
    [
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison
        # of seven methods", Statistics in Medicine 17:857-872, Table II, method 3 (score
        # interval without continuity correction), given to 4 decimals.
        (81, 263, (0.2553, 0.3662)),
        (15, 148, (0.0624, 0.1605)),
        (0, 20, (0.0000, 0.1611)),
        (1, 29, (0.0061, 0.1718)),
    ],
)
def test_wilson_published_values(correct, n, expected):
    assert sig.wilson_interval(correct, n) == pytest.approx(expected, abs=5e-5)


@pytest.mark.parametrize(("correct", "n"), [(-1, 10), (11, 10), (0, 0)])
def test_wilson_rejects_impossible_counts(correct, n):
    with pytest.raises(ValueError, match="wilson_interval"):
        sig.wilson_interval(correct, n)


# ----------------------------------------------------------------------------------------------
# McNemar's exact test


def test_mcnemar_counts_the_discordant_images_by_direction():
    a, b = pair(both=5, a_only=3, b_only=7, neither=1)
    result = sig.mcnemar_exact(a, b)
    assert (result.b01, result.b10, result.n) == (3, 7, 16)
    assert result.delta == pytest.approx((7 - 3) / 16)  # b minus a


def test_mcnemar_published_value():
    # Fagerland, Lydersen & Laake (2013), BMC Medical Research Methodology 13:91: airway
    # hyper-responsiveness before/after stem cell transplantation, 1 and 7 discordant pairs,
    # exact conditional p = 0.070; by hand 2 * (C(8,0) + C(8,1)) / 2**8 = 18/256.
    a, b = pair(both=1, a_only=1, b_only=7, neither=12)
    assert sig.mcnemar_exact(a, b).pvalue == pytest.approx(18 / 256, abs=1e-12)


@pytest.mark.parametrize(
    ("both", "a_only", "b_only", "neither"),
    [(40, 3, 9, 48), (40, 9, 3, 48), (4015, 985, 1015, 3985), (5000, 0, 30, 4970), (3, 5, 5, 1)],
)
def test_mcnemar_matches_statsmodels(both, a_only, b_only, neither):
    a, b = pair(both, a_only, b_only, neither)
    # statsmodels' table: rows a right/wrong, columns b right/wrong
    expected = sm_mcnemar([[both, a_only], [b_only, neither]], exact=True).pvalue
    assert sig.mcnemar_exact(a, b).pvalue == pytest.approx(expected, rel=1e-9)


def test_mcnemar_without_discordant_images_is_p_1():
    a, b = pair(both=6, a_only=0, b_only=0, neither=4)
    assert sig.mcnemar_exact(a, b) == (0, 0, 10, 0.0, 1.0)


def test_correctness_must_be_bool_arrays_over_the_same_images():
    a, b = pair(both=6, a_only=1, b_only=1, neither=4)
    with pytest.raises(ValueError, match=r"a_correct: expected .* bool array.* got int64"):
        sig.mcnemar_exact(a.astype(np.int64), b)
    with pytest.raises(ValueError, match="different lengths"):
        sig.paired_bootstrap_delta(a, b[:-1])
    with pytest.raises(ValueError, match=r"parent\[1\]"):
        sig.compare_to_parent([a], [b, np.array([], dtype=bool)])
    with pytest.raises(ValueError, match="confidence"):
        sig.paired_bootstrap_delta(a, b, confidence=95)
    with pytest.raises(ValueError, match="n_boot"):
        sig.picked_gap([a, b], 0, n_boot=0)
    with pytest.raises(ValueError, match="val_pick: 2 is not a checkpoint index"):
        sig.picked_gap([a, b], 2)


# ----------------------------------------------------------------------------------------------
# Our issue's acceptance cases: 10,000 images at about 50%, the child 0.3 points (30 images) ahead

NOISY = pair(both=4015, a_only=985, b_only=1015, neither=3985)  # 2,000 images disagree
DECISIVE = pair(both=5000, a_only=0, b_only=30, neither=4970)  # the child fixes 30, breaks none


@pytest.mark.parametrize(("case", "within_noise"), [(NOISY, True), (DECISIVE, False)])
def test_acceptance_a_third_of_a_point(case, within_noise):
    parent, child = case
    assert parent.mean() == 0.5
    assert child.mean() == pytest.approx(0.503)
    test = sig.mcnemar_exact(parent, child)
    delta, low, high = sig.paired_bootstrap_delta(parent, child, seed=1)
    assert test.delta == delta == pytest.approx(0.003)
    assert (test.pvalue >= 0.05) is within_noise
    assert (low <= 0 <= high) is within_noise  # the bootstrap's verdict is McNemar's
    comparison = sig.compare_to_parent([child], [parent])
    assert comparison.within_noise is within_noise
    assert comparison.method == "mcnemar"


def test_a_change_is_real_only_when_test_and_interval_both_say_so(monkeypatch):
    # 5 images, all in the child's favour: p = 2 / 2**5 = 0.0625, yet the bootstrap interval
    # excludes 0 (a resample misses all 5 images with probability about e**-5 < 2.5%)
    parent, child = pair(both=5000, a_only=0, b_only=5, neither=4995)
    result = sig.compare_to_parent([child], [parent])
    assert result.pvalue == 0.0625
    assert result.low > 0
    assert result.within_noise
    # and the other way round: p < 0.05 with an interval that contains 0
    parent, child = DECISIVE
    monkeypatch.setattr(sig, "paired_bootstrap_delta", lambda *a, **k: sig.Delta(0.003, -1, 1))
    result = sig.compare_to_parent([child], [parent])
    assert result.pvalue < 0.05
    assert result.within_noise


def test_acceptance_p_values():
    assert sig.mcnemar_exact(*NOISY).pvalue == pytest.approx(0.52, abs=0.01)
    assert sig.mcnemar_exact(*DECISIVE).pvalue == pytest.approx(2 * 0.5**30)


# ----------------------------------------------------------------------------------------------
# Paired bootstrap


def test_bootstrap_is_deterministic_given_its_seed():
    a, b = NOISY
    assert sig.paired_bootstrap_delta(a, b, seed=7) == sig.paired_bootstrap_delta(a, b, seed=7)
    assert sig.paired_bootstrap_delta(a, b, seed=7) != sig.paired_bootstrap_delta(a, b, seed=8)


def test_bootstrap_matches_scipy_resampling_images():
    """Drawing the three outcome counts is the same bootstrap as scipy's resampling of images:
    the intervals agree to Monte Carlo precision (here about 0.0003)."""
    rng = np.random.default_rng(3)
    a, b = pair(both=900, a_only=150, b_only=230, neither=720)
    order = rng.permutation(len(a))
    a, b = a[order], b[order]
    delta, low, high = sig.paired_bootstrap_delta(a, b, n_boot=20_000, seed=4)
    reference = stats.bootstrap(
        (a, b),
        lambda x, y, axis: y.mean(axis=axis) - x.mean(axis=axis),
        paired=True,
        vectorized=True,
        method="percentile",
        n_resamples=20_000,
        batch=2_000,
        rng=np.random.default_rng(5),
    ).confidence_interval
    assert delta == pytest.approx(0.04)
    assert (low, high) == pytest.approx((reference.low, reference.high), abs=2e-3)
    assert low > 0  # not mirrored: a swapped sign gives about (-0.059, -0.021)


def coverage(confidence: float, simulations: int = 200, n: int = 1000) -> int:
    """How many of the simulations' intervals contain the true difference 0: a and b equally
    accurate (60%), disagreeing on about a fifth of the images."""
    rng = np.random.default_rng(11)
    hits = 0
    for seed in range(simulations):
        kind = rng.choice(4, n, p=[0.5, 0.1, 0.1, 0.3])  # both right, a only, b only, neither
        a, b = np.isin(kind, [0, 1]), np.isin(kind, [0, 2])
        _, low, high = sig.paired_bootstrap_delta(
            a, b, n_boot=1000, seed=seed, confidence=confidence
        )
        hits += low <= 0 <= high
    return hits


def plausible(hits: int, confidence: float, simulations: int = 200) -> bool:
    """Whether `hits` of `simulations` is a plausible count at the nominal coverage."""
    low, high = stats.binom.interval(0.999, simulations, confidence)
    return low <= hits <= high


def test_bootstrap_interval_covers_a_zero_difference_95_percent_of_the_time():
    assert plausible(coverage(0.95), 0.95)
    # power: an interval of 50% confidence is caught as too narrow for 95%
    hits = coverage(0.5)
    assert not plausible(hits, 0.95)
    assert plausible(hits, 0.5)


# ----------------------------------------------------------------------------------------------
# Seed replicates


def test_replicate_summary():
    summary = sig.replicate_summary([0.61, 0.63, 0.62, 0.66])
    assert summary.mean == pytest.approx(0.63)
    assert summary.sd == pytest.approx(np.std([0.61, 0.63, 0.62, 0.66], ddof=1))
    assert summary.n == 4
    one = sig.replicate_summary([0.61])
    assert (one.mean, one.n) == (0.61, 1)
    assert math.isnan(one.sd)
    with pytest.raises(ValueError, match="one or more"):
        sig.replicate_summary([])


def replicates(counts: list[int], n: int = 10_000, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [run(c, n, rng) for c in counts]


def test_several_replicates_on_both_sides_use_welch():
    child_counts, parent_counts = [5230, 5190, 5260], [5100, 5180, 5120, 5140, 5155]
    child, parent = replicates(child_counts), replicates(parent_counts, seed=1)
    c, p = np.array(child_counts) / 10_000, np.array(parent_counts) / 10_000
    welch = stats.ttest_ind(c, p, equal_var=False)
    student = stats.ttest_ind(c, p, equal_var=True)
    result = sig.compare_to_parent(child, parent)
    assert result.method == "welch"
    assert (result.n_child, result.n_parent) == (3, 5)
    assert result.delta == pytest.approx(c.mean() - p.mean())
    assert result.pvalue == pytest.approx(welch.pvalue, rel=1e-9)
    ci = welch.confidence_interval(0.95)
    assert (result.low, result.high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert result.pvalue != pytest.approx(student.pvalue, rel=0.05)  # the rules are told apart
    assert result.within_noise is (result.low <= 0 <= result.high) is (result.pvalue >= 0.05)


def test_one_run_against_replicates_pools_the_variance():
    child, parent = replicates([5230]), replicates([5100, 5180, 5120, 5140], seed=1)
    p = np.array([5100, 5180, 5120, 5140]) / 10_000
    student = stats.ttest_ind([0.523], p, equal_var=True)
    result = sig.compare_to_parent(child, parent, confidence=0.9)
    assert result.method == "student"
    assert result.pvalue == pytest.approx(student.pvalue, rel=1e-9)
    ci = student.confidence_interval(0.9)
    assert (result.low, result.high) == pytest.approx((ci.low, ci.high), rel=1e-9)


@pytest.mark.parametrize("child_counts", [[100], [100, 9000]])
def test_t_intervals_keep_to_the_differences_that_exist(child_counts):
    """Few replicates far apart on a tiny test set: the t interval alone runs past -100 pp (an
    accuracy difference no two classifiers can have); the reported one stops at -1 and keeps
    the t interval's other end and the test's p-value."""
    parent_counts = [9000, 9900]
    child, parent = replicates(child_counts), replicates(parent_counts, seed=1)
    c, p = np.array(child_counts) / 10_000, np.array(parent_counts) / 10_000
    welch = len(child_counts) > 1
    t = stats.ttest_ind(c, p, equal_var=not welch)
    ci = t.confidence_interval(0.95)
    assert ci.low < -1  # the case in point
    result = sig.compare_to_parent(child, parent)
    assert result.method == ("welch" if welch else "student")
    assert result.low == -1.0
    assert result.high == pytest.approx(min(1.0, ci.high), rel=1e-9)
    assert result.pvalue == pytest.approx(t.pvalue, rel=1e-9)
    assert -1 <= result.low <= result.delta <= result.high <= 1


def test_seed_variance_counts():
    """The first replicates alone differ by 0.6 points, 60 images all in the child's favour:
    decisive for McNemar. The other seeds score 49.5 and 50.7 for the child, 50.8 and 49.9 for
    the parent: across seeds the recipes are about equal, within noise."""
    rng = np.random.default_rng(2)
    parent = [run(5000, 10_000, rng), run(5080, 10_000, rng), run(4990, 10_000, rng)]
    first = parent[0].copy()
    first[np.flatnonzero(~first)[:60]] = True
    child = [first, run(4950, 10_000, rng), run(5070, 10_000, rng)]
    one_run = sig.compare_to_parent(child[:1], parent[:1])
    assert one_run.pvalue < 1e-15
    assert not one_run.within_noise
    seeds = sig.compare_to_parent(child, parent)
    assert seeds.method == "welch"
    assert seeds.delta == pytest.approx((5060 + 4950 + 5070 - 5000 - 5080 - 4990) / 30_000)
    assert seeds.within_noise


def test_replicates_without_spread_fall_back_to_the_paired_test():
    child, parent = DECISIVE[1], DECISIVE[0]
    result = sig.compare_to_parent([child, child], [parent, parent, parent], seed=3)
    one = sig.compare_to_parent([child], [parent], seed=3)
    assert result.method == "mcnemar"
    assert result[:6] == one[:6]


def test_one_replicate_each_is_mcnemar_and_the_paired_bootstrap():
    parent, child = NOISY
    result = sig.compare_to_parent([child], [parent], n_boot=500, seed=9)
    delta, low, high = sig.paired_bootstrap_delta(parent, child, n_boot=500, seed=9)
    assert (result.delta, result.low, result.high) == (delta, low, high)
    assert result.pvalue == sig.mcnemar_exact(parent, child).pvalue


# ----------------------------------------------------------------------------------------------
# Picking a checkpoint on test


def scipy_gap(correct: list[np.ndarray], val_pick: int, n_boot: int, seed: int, redo: bool):
    """The gap's percentile interval by scipy.stats.bootstrap, the test pick redone in every
    resample or (redo=False) fixed at the one found on the full test set."""
    fixed = int(np.argmax([x.mean() for x in correct]))

    def gap(*samples, axis):
        acc = np.stack([s.mean(axis=axis) for s in samples])
        return (acc.max(axis=0) if redo else acc[fixed]) - acc[val_pick]

    result = stats.bootstrap(
        correct,
        gap,
        paired=True,
        vectorized=True,
        method="percentile",
        n_resamples=n_boot,
        rng=np.random.default_rng(seed),
    )
    return result.confidence_interval


def noise_checkpoints(k: int, n: int = 2000, seed: int = 0) -> list[np.ndarray]:
    """k checkpoints of the same true accuracy (50%), their mistakes independent."""
    rng = np.random.default_rng(seed)
    return list(rng.random((k, n)) < 0.5)


def test_picked_gap_values():
    a, b = pair(both=50, a_only=5, b_only=20, neither=25)
    c = b.copy()
    result = sig.picked_gap([a, b, c], val_pick=0, n_boot=200)
    assert result.test_pick == 1  # ties go to the first
    assert (result.val_picked, result.test_picked) == (0.55, 0.70)
    assert result.gap == pytest.approx(0.15)
    assert 0 < result.low <= result.gap <= result.high


def test_picked_gap_matches_scipy_with_the_pick_redone():
    correct = noise_checkpoints(20)
    result = sig.picked_gap(correct, val_pick=3, n_boot=500, seed=6)
    reference = scipy_gap(correct, 3, n_boot=500, seed=6, redo=True)
    assert result.test_picked >= result.val_picked
    # The same resamples as scipy's (rng.integers(0, n, (n_boot, n))) while they fit in one
    # chunk, so the same interval; drawn otherwise, expect agreement to about 0.003.
    assert (result.low, result.high) == pytest.approx((reference.low, reference.high), abs=1e-12)


def test_picked_gap_of_pure_noise_is_real_optimism():
    """60 checkpoints of equal accuracy: picking the best on test gains about 2.3 standard
    errors of one accuracy (the mean of the largest of 60 normals) over a checkpoint picked
    independently of test. That gain is an artefact of the pick, and the interval says it is
    there; an interval with the pick fixed cannot, since the two checkpoints are equally good."""
    correct = noise_checkpoints(60)
    result = sig.picked_gap(correct, val_pick=0, n_boot=500, seed=1)
    fixed = scipy_gap(correct, 0, n_boot=500, seed=1, redo=False)
    se = math.sqrt(0.25 / 2000)
    assert result.test_picked >= result.val_picked
    assert result.gap == pytest.approx(2.3 * se, abs=2 * se)
    assert result.low > 0  # excludes 0
    assert fixed.low < 0 < fixed.high
    assert result.low > fixed.low
    assert result.high > fixed.high


def test_picked_gap_includes_0_when_val_picks_as_well():
    # two equally good checkpoints: val's pick is the better on test in about half the resamples
    correct = noise_checkpoints(2, seed=4)
    result = sig.picked_gap(correct, val_pick=int(np.argmin([x.mean() for x in correct])))
    assert result.gap > 0
    assert result.low == 0
    # one checkpoint far better, and picked on val: the gap is 0 in every resample
    best = run(1500, 2000, np.random.default_rng(5))
    result = sig.picked_gap([*correct, best], val_pick=2)
    assert (result.gap, result.low, result.high) == (0, 0, 0)
