"""The statistics the report uses to say whether a rung's change is real: intervals for one
accuracy, paired tests and intervals for a change versus the parent (one run or seed
replicates per side), and the optimism of picking a checkpoint by its test accuracy.

Pure functions over numpy arrays. A classifier's result on the test set is a bool array, one
entry per test image (True: predicted right); accuracies are fractions in [0, 1] here, and the
report turns them into % as it does every other accuracy (`tables._pct`). Bootstraps are
deterministic given their seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_BOOT = 2000
# Index matrices of a bootstrap are drawn this many elements at a time (int64: 32 MiB).
_CHUNK_ELEMENTS = 1 << 22


class McNemar(NamedTuple):
    b01: int  # images a gets right and b gets wrong
    b10: int  # images a gets wrong and b gets right
    n: int  # test images
    delta: float  # accuracy of b minus accuracy of a
    pvalue: float  # exact two-sided; 1.0 without discordant images


class Delta(NamedTuple):
    delta: float  # accuracy of b minus accuracy of a
    low: float
    high: float


class Summary(NamedTuple):
    mean: float
    sd: float  # sample standard deviation (ddof=1); NaN for a single replicate
    n: int


class Comparison(NamedTuple):
    delta: float  # mean child accuracy minus mean parent accuracy
    low: float
    high: float
    pvalue: float
    within_noise: bool
    method: str  # "mcnemar", "welch" or "student": which rule of `compare_to_parent` applied
    n_child: int  # replicates
    n_parent: int


class PickedGap(NamedTuple):
    val_picked: float  # test accuracy of the checkpoint picked on val
    test_picked: float  # test accuracy of the checkpoint picked on test (the best one)
    test_pick: int  # index of the checkpoint picked on test (ties: the first)
    gap: float  # test_picked - val_picked, >= 0
    low: float  # paired-bootstrap interval of the gap, the test pick redone in every resample
    high: float


# ----------------------------------------------------------------------------------------------
# Checks of the inputs


def _correct(x, name: str) -> np.ndarray:
    """One classifier's per-image correctness: a non-empty 1-D bool array."""
    x = np.asarray(x)
    if x.dtype != np.bool_ or x.ndim != 1 or not len(x):
        raise ValueError(
            f"{name}: expected a non-empty 1-D bool array (True: image predicted right), "
            f"got {x.dtype} {x.shape}"
        )
    return x


def _same_images(arrays: list[np.ndarray], name: str) -> None:
    sizes = sorted({len(x) for x in arrays})
    if len(sizes) > 1:
        raise ValueError(f"{name}: correctness arrays of different lengths {sizes}")


def _alpha(confidence: float) -> float:
    """1 - confidence: the significance level, and the two tails a percentile interval leaves."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a number between 0 and 1, got {confidence}")
    return 1 - confidence


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = _alpha(confidence)
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _seed_rng(seed: int, n_boot: int) -> np.random.Generator:
    if n_boot < 1:
        raise ValueError(f"n_boot: expected a positive number of resamples, got {n_boot}")
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------
# One accuracy


def wilson_interval(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of an accuracy of `correct` out of `n` images (no continuity
    correction): better coverage than the normal approximation, and never outside [0, 1]."""
    if n < 1 or not 0 <= correct <= n:
        raise ValueError(
            f"wilson_interval: expected 0 <= correct <= n and n >= 1, got {correct}/{n}"
        )
    ci = stats.binomtest(int(correct), int(n)).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def wilson_intervals(correct, n, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """`wilson_interval` for arrays of counts at once (the report's hundreds of checkpoints),
    from the closed form: centre (p + z²/2n) / (1 + z²/n), half-width
    z sqrt(p(1 - p)/n + z²/4n²) / (1 + z²/n), z the normal quantile. `correct` may be
    fractional (the mean count of seed replicates); NaN in either gives NaN."""
    correct, n = np.asarray(correct, dtype=float), np.asarray(n, dtype=float)
    valid = ~(np.isnan(correct) | np.isnan(n))
    if np.any(valid & ((n < 1) | (correct < 0) | (correct > n))):
        raise ValueError("wilson_intervals: expected 0 <= correct <= n and n >= 1")
    z = stats.norm.ppf(1 - _alpha(confidence) / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = correct / n
        scale = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / scale
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / scale
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def replicate_summary(accuracies: Sequence[float]) -> Summary:
    """Mean, sample standard deviation (ddof=1; NaN for one replicate) and count of the
    accuracies of an experiment's seed replicates."""
    acc = np.asarray(accuracies, dtype=float)
    if acc.ndim != 1 or not len(acc):
        raise ValueError(f"replicate_summary: expected one or more accuracies, got {acc.shape}")
    # np.std of one value warns (zero degrees of freedom): say NaN without the warning.
    sd = float(np.std(acc, ddof=1)) if len(acc) > 1 else float("nan")
    return Summary(float(acc.mean()), sd, len(acc))


# ----------------------------------------------------------------------------------------------
# Two classifiers on the same test images


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> McNemar:
    """McNemar's exact test of classifiers a and b on the same test images.

    Only the images they disagree on carry information: under "a and b are equally accurate"
    each of the b01 + b10 discordant images favours b with probability 1/2, so the p-value is
    the two-sided binomial test of b10 successes out of b01 + b10 at p = 0.5.
    """
    a, b = _correct(a_correct, "a_correct"), _correct(b_correct, "b_correct")
    _same_images([a, b], "mcnemar_exact")
    b01, b10 = int(np.count_nonzero(a & ~b)), int(np.count_nonzero(~a & b))
    pvalue = stats.binomtest(b10, b01 + b10, 0.5).pvalue if b01 + b10 else 1.0
    return McNemar(b01, b10, len(a), (b10 - b01) / len(a), float(pvalue))


def paired_bootstrap_delta(
    a_correct: np.ndarray,
    b_correct: np.ndarray,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Delta:
    """Accuracy of b minus accuracy of a, with the percentile interval of a paired bootstrap:
    test images resampled with replacement, the same images for both classifiers."""
    a, b = _correct(a_correct, "a_correct"), _correct(b_correct, "b_correct")
    _same_images([a, b], "paired_bootstrap_delta")
    rng, n = _seed_rng(seed, n_boot), len(a)
    b01, b10 = int(np.count_nonzero(a & ~b)), int(np.count_nonzero(~a & b))
    # Written by hand rather than with scipy.stats.bootstrap(paired=True), which draws an
    # n_boot x n index matrix (0.4 s for 10,000 images x 2,000 resamples): the difference
    # on a resample depends only on how many of its n draws fall on b01 images (-1), on b10
    # images (+1) and on the rest (0), and those counts are Multinomial(n, (b01, b10, rest) / n).
    # Drawing them directly is the same bootstrap distribution at O(n_boot) cost.
    draws = rng.multinomial(n, [b01 / n, b10 / n, (n - b01 - b10) / n], size=n_boot)
    low, high = _percentile_interval((draws[:, 1] - draws[:, 0]) / n, confidence)
    return Delta((b10 - b01) / n, low, high)


# ----------------------------------------------------------------------------------------------
# A rung versus its parent


def compare_to_parent(
    child: Sequence[np.ndarray],
    parent: Sequence[np.ndarray],
    *,
    confidence: float = CONFIDENCE,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Comparison:
    """Is the child's change of test accuracy versus its parent more than noise?

    `child` and `parent` list one correctness array per seed replicate (one array each
    without replicates), all over the same test images. delta = mean accuracy of the child's
    replicates minus mean accuracy of the parent's. The rule:

    - One replicate on each side: p from McNemar's exact test on the two runs' paired images,
      the interval from the paired bootstrap of the accuracy difference (`n_boot` resamples,
      percentile). Only test-set noise is measured: one run per side says nothing about seeds.
    - Several replicates on both sides: Welch's t-test (unequal variances) on the
      per-replicate accuracies, and its t interval for the difference of means. The spread of
      the replicates is how much the accuracy on this test set moves with the seed. The test
      set is the same for every replicate, so how much another test set of the same size
      could favour one recipe over the other is not in it.
    - Several replicates on one side only: Student's t-test with pooled variance on the
      per-replicate accuracies, and its t interval. A single run cannot estimate its own seed
      variance, so it is assumed equal to that of the replicated side.
    - Replicates whose accuracies do not vary at all (on both sides) give a t-test no variance
      to work with: the one-replicate rule is applied to the first replicate of each side.

    A t interval is the set of differences its test does not reject; two accuracies cannot
    differ by more than 1, so the set is kept to [-1, 1], the differences that exist. (With
    few, spread replicates the t interval alone runs past them: [-1.10, -0.43] is [-1, -0.43].)
    Its coverage is the t interval's, since the true difference always lies in [-1, 1]; the
    bootstrap intervals never leave it.

    within_noise is True when p >= 1 - confidence or the interval contains 0: a change counts
    as real only when both the test and the interval say so. For the t rules the two always
    agree; with one replicate per side they can disagree near the border, and the change is
    then called within noise.
    """
    child = [_correct(x, f"child[{i}]") for i, x in enumerate(child)]
    parent = [_correct(x, f"parent[{i}]") for i, x in enumerate(parent)]
    if not child or not parent:
        raise ValueError("compare_to_parent: expected one or more replicates on each side")
    _same_images(child + parent, "compare_to_parent")
    alpha = _alpha(confidence)
    child_acc = np.array([x.mean() for x in child])
    parent_acc = np.array([x.mean() for x in parent])
    counts = {"n_child": len(child), "n_parent": len(parent)}

    if max(len(child), len(parent)) == 1 or (np.ptp(child_acc) == 0 and np.ptp(parent_acc) == 0):
        # (replicates without spread: their mean difference is that of the first ones)
        pvalue = mcnemar_exact(parent[0], child[0]).pvalue
        delta, low, high = paired_bootstrap_delta(
            parent[0], child[0], n_boot=n_boot, seed=seed, confidence=confidence
        )
        method = "mcnemar"
    else:
        welch = min(len(child), len(parent)) > 1
        result = stats.ttest_ind(child_acc, parent_acc, equal_var=not welch)
        ci = result.confidence_interval(confidence)
        delta = float(child_acc.mean() - parent_acc.mean())
        low, high = max(-1.0, float(ci.low)), min(1.0, float(ci.high))
        pvalue = float(result.pvalue)
        method = "welch" if welch else "student"
    within = bool(pvalue >= alpha or low <= 0 <= high)
    return Comparison(delta, low, high, pvalue, within, method, **counts)


# ----------------------------------------------------------------------------------------------
# Picking a checkpoint by its test accuracy


def _resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Bootstrap resamples of n images as float32 count matrices (resamples x images), in
    chunks: how often each image was drawn. A checkpoint's hits on every resample are the sum of
    the counts of the images it gets right."""
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, rows):
        m = min(rows, n_boot - start)
        index = rng.integers(0, n, (m, n)) + n * np.arange(m)[:, None]
        yield np.bincount(index.ravel(), minlength=m * n).reshape(m, n).astype(np.float32)


def picked_gap(
    test_correct: Sequence[np.ndarray],
    val_pick: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> PickedGap:
    """How much picking a checkpoint by its test accuracy flatters the result.

    `test_correct` lists one experiment's checkpoints' correctness on the test images;
    `val_pick` is the index of the one picked on val. The gap is the test accuracy of the best
    checkpoint on test minus that of the val-picked one. Its interval is a paired bootstrap
    (percentile) over test images in which the best checkpoint is picked again on every
    resample, as picking on test would have done on that test set: fixing the pick found on
    the full test set would leave the selection out and centre the interval on a gap that
    picking made as large as it could.
    """
    return replicate_picked_gap(
        [test_correct], [val_pick], n_boot=n_boot, seed=seed, confidence=confidence
    )


def replicate_picked_gap(
    runs: Sequence[Sequence[np.ndarray]],
    val_picks: Sequence[int],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> PickedGap:
    """`picked_gap` of a set of seed replicates: each run's checkpoints (`runs[r]`, as
    `test_correct` above) with its own val pick (`val_picks[r]`). val_picked, test_picked and gap
    are means over the runs; test_pick is the first run's. In every bootstrap resample the same
    test images are drawn for every run (they share the test set) and each run's test pick is
    redone. One run: exactly `picked_gap`."""
    (gap,) = picked_gaps([runs], [val_picks], n_boot=n_boot, seed=seed, confidence=confidence)
    return gap


class RunGap(NamedTuple):
    """One run's part of a picked gap: its gap on every bootstrap resample (correct images,
    float32: the test pick's minus the val pick's) and its accuracies on all the images."""

    gaps: np.ndarray  # (n_boot,) float32
    images: int  # test images counted
    val_picked: float
    test_picked: float
    test_pick: int


class PickedGapBootstrap:
    """`picked_gaps` run by run, so that a caller holds each run's checkpoints only until they
    are counted: the resamples (how often each image is drawn in each; 10 MB for 1,000
    resamples of 10,000 images) are drawn once, from the seed, and every run is counted on the
    same ones, as in `picked_gaps`.

    A run's gap on a resample is a difference of hits (its best checkpoint's minus its val
    pick's), so each checkpoint is counted relative to the run's first, from the one before it:
    plus the counts of the images it gets right that that one got wrong, minus those it lost.
    Consecutive checkpoints differ in a few percent of the images, so this is a fraction of a
    product with every image (the product was the largest part of the report's CPU at 1,000
    experiments). Integer counts, summed exactly: the gaps (float32, exact below 2**24) are
    those of the product, bit for bit."""

    def __init__(self, n: int, *, n_boot: int = 1000, seed: int = 0):
        self.n = n
        counts = np.concatenate(list(_resample_counts(n, n_boot, _seed_rng(seed, n_boot))))
        # Images x resamples, in the smallest integer type that holds every count (uint8: a
        # step gathers a few hundred rows of 1,000 bytes).
        smallest = np.min_scalar_type(int(counts.max()))
        self.by_image = counts.T.astype(smallest, order="C")
        self._done: list[RunGap] = []

    def add(self, checkpoints: Sequence[np.ndarray], val_pick: int) -> None:
        """One run: its checkpoints' correctness (1-D bool arrays, in epoch order) and the index
        of its val pick."""
        checkpoints = self._checked(checkpoints, val_pick)
        hits = np.zeros((self.by_image.shape[1], len(checkpoints)), np.int32)  # - the first's
        for j in range(1, len(checkpoints)):
            now, before = checkpoints[j], checkpoints[j - 1]
            gained, lost = np.flatnonzero(now & ~before), np.flatnonzero(before & ~now)
            hits[:, j] = (
                hits[:, j - 1]
                + self.by_image[gained].sum(axis=0, dtype=np.int32)
                - self.by_image[lost].sum(axis=0, dtype=np.int32)
            )
        acc = np.array([np.count_nonzero(x) for x in checkpoints]) / self.n
        best = int(np.argmax(acc))
        gaps = (hits.max(axis=1) - hits[:, val_pick]).astype(np.float32)
        self._done.append(RunGap(gaps, self.n, float(acc[val_pick]), float(acc[best]), best))

    def results(self) -> list[RunGap]:
        """Every run added, in order."""
        return list(self._done)

    def _checked(self, checkpoints: Sequence[np.ndarray], val_pick: int) -> list[np.ndarray]:
        checkpoints = [_correct(x, f"test_correct[{j}]") for j, x in enumerate(checkpoints)]
        if not checkpoints:
            raise ValueError("picked_gap: expected one or more checkpoints")
        if not 0 <= val_pick < len(checkpoints):
            raise ValueError(
                f"val_pick: {val_pick} is not a checkpoint index (0..{len(checkpoints) - 1})"
            )
        _same_images([*checkpoints, np.empty(self.n)], "picked_gap")
        return checkpoints


def set_gap(runs: Sequence[RunGap], confidence: float = CONFIDENCE) -> PickedGap:
    """A set of runs' picked gap (one run, or seed replicates; each counted by the same
    PickedGapBootstrap): means over its runs, as `replicate_picked_gap`."""
    if not runs:
        raise ValueError("picked_gaps: expected one or more runs in a set")
    gaps = np.sum(np.stack([r.gaps for r in runs], axis=1), axis=1, dtype=np.float64)
    low, high = _percentile_interval(gaps / (runs[0].images * len(runs)), confidence)
    val = float(np.mean([r.val_picked for r in runs]))
    best = float(np.mean([r.test_picked for r in runs]))
    return PickedGap(val, best, runs[0].test_pick, best - val, low, high)


def picked_gaps(
    sets: Sequence[Sequence[Sequence[np.ndarray]]],
    val_picks: Sequence[Sequence[int]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> list[PickedGap]:
    """`replicate_picked_gap` of many sets of runs at once (a report's every experiment), each
    exactly as alone: with one seed every set's bootstrap draws the same resamples of the test
    images, so they are drawn once (drawing them is most of the cost of one set) and every run
    is counted on them (PickedGapBootstrap)."""
    if len(sets) != len(val_picks):
        raise ValueError("picked_gaps: expected the val picks of every set")
    for i, (checkpoints_of, picks_of) in enumerate(zip(sets, val_picks, strict=True)):
        if not checkpoints_of or len(checkpoints_of) != len(picks_of):
            raise ValueError(
                f"picked_gaps: set {i}: expected one val pick for each of 1 or more runs"
            )
    if not sets:
        return []
    first = [_correct(x, "test_correct[0]") for x in sets[0][0][:1]]
    if not first:
        raise ValueError("picked_gap: expected one or more checkpoints")
    _same_images([x for runs in sets for run in runs for x in run], "picked_gap")
    bootstrap = PickedGapBootstrap(len(first[0]), n_boot=n_boot, seed=seed)
    for runs, picks in zip(sets, val_picks, strict=True):
        for run, pick in zip(runs, picks, strict=True):
            bootstrap.add(run, pick)
    counted = iter(bootstrap.results())
    return [set_gap([next(counted) for _ in runs], confidence) for runs in sets]
