"""Is each rung's change real? The report's intervals, comparisons with the parent, seed
replicates, the runner-up verdict and the test-picked gain, checked against the fixture's
per-image predictions (report_fixtures.correct) and statistics computed here with scipy or
with the separately tested functions of ladder.report.significance."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ladder.report import build_report, significance
from ladder.report.html import DELTA_TEST, DELTA_TTA, PICKED_GAP
from report_fixtures import RESULTS, correct, md_ladder, write_inputs
from scipy import stats

# The val-picked epoch of every run in the fixtures (highest val, ties: earliest).
VAL_PICK = {"a": 2, "b": 2, "c": 3, "a_s1": 2, "a_s2": 3, "b_s1": 3}


def build(tmp_path: Path, **kwargs) -> Path:
    out = tmp_path / "out"
    build_report(**write_inputs(tmp_path, **kwargs), out=out)
    return out


def read_ladder(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "ladder.csv", keep_default_na=False, na_values=[""]).set_index(
        "experiment"
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("noise"))


@pytest.fixture(scope="module")
def replicated(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("replicates"), replicates=True)


def pct(interval) -> list[float]:
    """Percentages, as ladder.csv holds them (full precision: compare with approx)."""
    return [100 * v for v in interval]


# ----------------------------------------------------------------------------------------------
# Intervals


def test_every_accuracy_has_the_wilson_interval_of_its_per_image_counts(report):
    ladder = read_ladder(report)
    for name in "abc":
        epoch = VAL_PICK[name]
        for column, split in (("val_acc", "val"), ("test_acc", "test"), ("test_acc_tta", "tta")):
            if split == "tta" and RESULTS[name]["tta"] is None:
                assert ladder.loc[name, [f"{column}_low", f"{column}_high"]].isna().all()
                continue
            hits = correct(name, split, epoch)
            expected = pct(significance.wilson_interval(hits.sum(), len(hits)))
            got = ladder.loc[name, [f"{column}_low", f"{column}_high"]].tolist()
            assert got == pytest.approx(expected, abs=1e-9), (name, column)
    # Hand-checked once: 55 of 100 images.
    assert ladder.loc["b", ["test_acc_low", "test_acc_high"]].round(2).tolist() == [45.24, 64.39]


def test_every_checkpoint_has_its_intervals(report):
    table = pd.read_csv(report / "checkpoints.csv")
    assert len(table) == 9
    for _, row in table.iterrows():
        hits = correct(row["experiment"], "test", row["epoch"])
        expected = pct(significance.wilson_interval(hits.sum(), len(hits)))
        assert [row["test_acc_low"], row["test_acc_high"]] == pytest.approx(expected, abs=1e-9)
        hits = correct(row["experiment"], "val", row["epoch"])
        expected = pct(significance.wilson_interval(hits.sum(), len(hits)))
        assert [row["val_acc_low"], row["val_acc_high"]] == pytest.approx(expected, abs=1e-9)


def test_vectorised_wilson_matches_the_one_at_a_time_interval():
    counts = np.array([0, 1, 11, 50, 99, 100, 4321])
    n = np.array([100, 100, 20, 100, 100, 100, 10000])
    low, high = significance.wilson_intervals(counts, n)
    for k, m, lo, hi in zip(counts, n, low, high, strict=True):
        assert (lo, hi) == pytest.approx(significance.wilson_interval(k, m), abs=1e-12)
    low, high = significance.wilson_intervals([np.nan, 10.5], [100, 20])
    assert math.isnan(low[0])
    assert math.isnan(high[0])
    assert low[1] < 10.5 / 20 < high[1]  # a fractional (mean) count is allowed


# ----------------------------------------------------------------------------------------------
# A rung versus its parent


def test_one_run_per_side_is_mcnemar_and_the_paired_bootstrap(report):
    ladder = read_ladder(report)
    for child, parent, real in (("b", "a", True), ("c", "b", False)):
        c, p = correct(child, "test", VAL_PICK[child]), correct(parent, "test", VAL_PICK[parent])
        b01, b10 = int((p & ~c).sum()), int((~p & c).sum())
        expected_p = stats.binomtest(b10, b01 + b10, 0.5).pvalue  # McNemar's exact test
        row = ladder.loc[child]
        assert row["p_vs_parent"] == pytest.approx(expected_p, rel=5e-3)
        delta = significance.paired_bootstrap_delta(p, c)
        assert [row["delta_low"], row["delta_high"]] == pytest.approx(pct(delta[1:]), abs=1e-9)
        assert row["delta_test_vs_parent"] == pytest.approx(100 * delta.delta)
        assert row["within_noise"] == (not real)
        assert row["delta_method"] == "mcnemar"
    # b vs a: 15 points on 20 discordant images against 5; c vs b: 1 point, 6 against 5.
    assert ladder.loc["b", "p_vs_parent"] < 0.05 < ladder.loc["c", "p_vs_parent"]
    assert ladder.loc["c", "delta_low"] < 0 < ladder.loc["c", "delta_high"]
    # The TTA Δ has the same statistics on the TTA votes (only where both rungs have TTA).
    c, p = correct("c", "tta", 3), correct("b", "tta", 2)
    expected = significance.compare_to_parent([c], [p])
    assert ladder.loc["c", "p_tta_vs_parent"] == pytest.approx(expected.pvalue, rel=5e-3)
    assert bool(ladder.loc["c", "tta_within_noise"]) is expected.within_noise is True
    assert ladder.loc["b", ["delta_tta_low", "p_tta_vs_parent", "tta_within_noise"]].isna().all()
    assert ladder.loc["a", ["delta_low", "p_vs_parent", "within_noise"]].isna().all()


def test_a_change_within_noise_is_marked_and_one_beyond_is_not(report):
    md = md_ladder(report).set_index("#")
    assert md.loc["3", DELTA_TEST] == "+1.00 [-6.00, +8.00] p = 1.000, within noise"
    assert md.loc["2", DELTA_TEST] == "+15.00 [+6.00, +25.00] p = 0.004"
    assert md.loc["3", DELTA_TTA].endswith(", within noise")
    page = (report / "index.html").read_text(encoding="utf-8")
    rows = page.split('<table id="ladder">', 1)[1].split("</table>", 1)[0].split("<tr")
    b, c = next(r for r in rows if ">b<" in r), next(r for r in rows if ">c<" in r)
    assert f'<td class="num noise" data-label="{DELTA_TEST}">+1.00' in c  # grey, not green
    assert "p = 1.000, within noise" in c
    assert f'<td class="num pos" data-label="{DELTA_TEST}">+15.00' in b
    assert "within noise" not in b
    assert "“within noise” (grey) when p ≥ 0.05 or its interval contains 0" in page


def test_ladder_csv_column_names_are_the_fixed_ones(report):
    header = (report / "ladder.csv").read_text().splitlines()[0].split(",")
    for name in (
        "test_acc_low", "test_acc_high", "delta_low", "delta_high", "p_vs_parent",
        "replicates", "test_acc_sd", "test_acc", "delta_test_vs_parent", "test_picked_test",
    ):  # fmt: skip
        assert name in header
    page = (report / "index.html").read_text(encoding="utf-8")
    for name in header:  # every column explained on the page
        assert f"<dt><code>{name}</code></dt>" in page


# ----------------------------------------------------------------------------------------------
# Seed replicates


def test_replicates_collapse_into_their_experiments_row(replicated):
    ladder = read_ladder(replicated)
    assert ladder.index.tolist() == ["a", "b", "c"]
    assert ladder["rung"].tolist() == [1, 2, 3]
    assert ladder["replicates"].tolist() == [3, 2, 1]
    assert ladder["replicate_names"].fillna("").tolist() == ["a_s1 a_s2", "b_s1", ""]
    assert ladder["test_acc"].tolist() == pytest.approx([42.0, 56.0, 56.0])  # means at each pick
    assert ladder["val_acc"].tolist() == pytest.approx([51.0, 71.0, 66.0])
    sd = ladder["test_acc_sd"]
    assert sd["a"] == pytest.approx(2.0)
    assert sd["b"] == pytest.approx(float(np.std([55, 57], ddof=1)))
    assert math.isnan(sd["c"])
    assert ladder["best"].tolist() == [False, True, False]
    # The interval of a set is Wilson's on its mean count (42 of 100 for a).
    assert ladder.loc["a", ["test_acc_low", "test_acc_high"]].tolist() == pytest.approx(
        pct(significance.wilson_interval(42, 100)), abs=1e-9
    )
    # Every replicate's checkpoints are still in checkpoints.csv.
    table = pd.read_csv(replicated / "checkpoints.csv")
    assert sorted(table["experiment"].unique()) == ["a", "a_s1", "a_s2", "b", "b_s1", "c"]
    assert len(table) == 18


def test_comparisons_use_every_replicate_of_both_sides(replicated):
    ladder = read_ladder(replicated)
    a = [40.0, 42.0, 44.0]
    b = [55.0, 57.0]
    welch = stats.ttest_ind(b, a, equal_var=False)  # b's set against a's set
    assert ladder.loc["b", "delta_method"] == "welch"
    assert ladder.loc["b", "p_vs_parent"] == pytest.approx(welch.pvalue, rel=5e-3)
    ci = welch.confidence_interval(0.95)
    assert [ladder.loc["b", "delta_low"], ladder.loc["b", "delta_high"]] == pytest.approx(
        [ci.low, ci.high], abs=0.006
    )
    student = stats.ttest_ind([56.0], b, equal_var=True)  # c, one run, against b's two
    assert ladder.loc["c", "delta_method"] == "student"
    assert ladder.loc["c", "p_vs_parent"] == pytest.approx(student.pvalue, rel=5e-3)
    assert bool(ladder.loc["c", "within_noise"]) is True
    assert ladder.loc["b", "delta_test_vs_parent"] == 14.0


def test_the_page_lists_replicates_under_their_experiment_not_as_rungs(replicated):
    page = (replicated / "index.html").read_text(encoding="utf-8")
    ladder = page.split('<table id="ladder">', 1)[1].split("</table>", 1)[0]
    assert ladder.count("<tr") == 2 + 3  # two header rows, three rungs
    assert "seed replicates: a_s1 (seed 1), a_s2 (seed 2)" in ladder
    assert "sd 2.00, 3 seeds" in ladder
    assert ">a_s1<" not in ladder
    listed = page.split('<ul class="runs" id="checkpoints">', 1)[1].split("</ul>", 1)[0]
    names = [s.split(">", 1)[1].split("</a>", 1)[0] for s in listed.split("<li><a href=")[1:]]
    assert names == ["a", "a_s1", "a_s2", "b", "b_s1", "c"]  # checkpoints: under their rung
    assert "seed replicate of a (seed 1)" in listed
    assert "seed replicate of a (seed 1)" in (replicated / "checkpoints" / "a_s1.html").read_text(
        encoding="utf-8"
    )
    assert "3 experiments (+ 3 seed replicates)" in page
    md = (replicated / "report.md").read_text(encoding="utf-8")
    assert "its test accuracy there is **56.00 %** without TTA (the mean of 2 seeds, sd 1.41;" in md


# ----------------------------------------------------------------------------------------------
# The headline: best versus runner-up


def test_headline_says_the_best_is_within_noise_of_the_runner_up(report):
    page = (report / "index.html").read_text(encoding="utf-8")
    c, p = correct("b", "test", 2), correct("c", "test", 3)
    expected = significance.compare_to_parent([c], [p])  # b against the runner-up c
    assert expected.within_noise
    assert (
        "Against the runner-up by val, rung 3, c (test 56.00 %): a difference of -1.00 pp, 95% "
        "interval [-7.00, +6.00], p = 1.000 (McNemar&#39;s exact test), <strong>within "
        "noise</strong>: this test set cannot tell b from the runner-up."
    ) in page
    assert (
        '<div class="label">versus the runner-up, by val</div><div class="value">within noise'
        in (page)
    )


def test_headline_says_when_the_best_is_distinguishable(tmp_path):
    c = {**RESULTS["c"], "test": [0.4, 0.5, 0.3]}  # c, still the runner-up by val: 30 % on test
    page = (build(tmp_path, results={"c": c}) / "index.html").read_text(encoding="utf-8")
    runner_up = "Against the runner-up by val, rung 3, c (test 30.00 %)"
    assert f"{runner_up}: a difference of +25.00 pp" in page
    assert "<strong>beyond noise</strong>: b is distinguishably better on this test set." in page


def test_the_runner_up_is_chosen_on_val_not_on_test(tmp_path):
    """a gets the highest test accuracy of all (80 %) but the lowest val accuracy: the runner-up
    is still c, the second by val."""
    a = {**RESULTS["a"], "test": [0.1, 0.8, 0.6]}
    page = (build(tmp_path, results={"a": a}) / "index.html").read_text(encoding="utf-8")
    assert "Against the runner-up by val, rung 3, c (test 56.00 %)" in page
    assert "Rung 1, a, has a higher test accuracy (80.00 %)" in page


# ----------------------------------------------------------------------------------------------
# Picking the checkpoint on test


def test_picked_gap_and_its_interval(report):
    ladder = read_ladder(report)
    runs = [correct("a", "test", e) for e in (1, 2, 3)]
    expected = significance.picked_gap(runs, val_pick=1)  # a: val picks epoch 2, test epoch 3
    assert expected.gap == pytest.approx(0.2)
    assert ladder.loc["a", "picked_gap"] == pytest.approx(20.0)
    gap_interval = ladder.loc["a", ["picked_gap_low", "picked_gap_high"]].tolist()
    assert gap_interval == pytest.approx(pct(expected[4:]), abs=1e-9)
    assert ladder.loc["a", "test_picked_test"] - ladder.loc["a", "test_acc"] == pytest.approx(20)
    assert ladder.loc[["b", "c"], "picked_gap"].tolist() == [0.0, 0.0]
    md = md_ladder(report, table=1).set_index("#")
    header = f"test-picked {PICKED_GAP}"
    assert md.loc["1", header] == f"+20.00 [{expected.low * 100:+.2f}, {expected.high * 100:+.2f}]"


def test_replicate_picked_gap_is_the_mean_gap_with_every_pick_redone(replicated):
    ladder = read_ladder(replicated)
    names = ["a", "a_s1", "a_s2"]
    runs = [[correct(n, "test", e) for e in (1, 2, 3)] for n in names]
    picks = [VAL_PICK[n] - 1 for n in names]
    gaps = [significance.picked_gap(run, pick).gap for run, pick in zip(runs, picks, strict=True)]
    expected = significance.replicate_picked_gap(runs, picks)
    assert expected.gap == pytest.approx(np.mean(gaps))
    assert ladder.loc["a", "picked_gap"] == pytest.approx(100 * expected.gap)
    gap_interval = ladder.loc["a", ["picked_gap_low", "picked_gap_high"]].tolist()
    assert gap_interval == pytest.approx(pct(expected[4:]), abs=1e-9)
    # One run: exactly picked_gap.
    assert significance.replicate_picked_gap(runs[:1], picks[:1]) == significance.picked_gap(
        runs[0], picks[0]
    )


def test_headline_shows_how_much_picking_on_test_would_flatter(tmp_path):
    b = {**RESULTS["b"], "test": [0.5, 0.55, 0.6]}  # b's best on test is epoch 3, not 2
    out = build(tmp_path, results={"b": b})
    page = (out / "index.html").read_text(encoding="utf-8")
    gap = significance.picked_gap([correct("b", "test", e, {"b": b}) for e in (1, 2, 3)], 1)
    assert (
        "Picking the checkpoint by its test accuracy instead (epoch 3) would report 60.00 %, "
        f"5.00 pp more (95% interval [{100 * gap.low:+.2f}, {100 * gap.high:+.2f}]) won by "
        "selecting on the test set: the honest figure is 55.00 %."
    ) in page
    label = "test-picked ours, no TTA (%)"
    assert f'<td class="num optimistic" data-label="{label}">60.00' in page  # greyed


def test_picked_gaps_of_many_sets_at_once_equal_each_alone():
    rng = np.random.default_rng(1)
    sets = [
        [[rng.random(300) < p for p in (0.4, 0.45, 0.5, 0.48)]],
        [[rng.random(300) < p for p in (0.6, 0.62)], [rng.random(300) < p for p in (0.6, 0.55)]],
        [[rng.random(300) < 0.3]],
    ]
    picks = [[1], [0, 1], [0]]
    together = significance.picked_gaps(sets, picks)
    alone = [significance.replicate_picked_gap(s, p) for s, p in zip(sets, picks, strict=True)]
    assert together == alone
    assert together[0] == significance.picked_gap(sets[0][0], 1)
