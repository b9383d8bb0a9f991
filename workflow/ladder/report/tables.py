"""The report's tables: run files read into DataFrames, the ladder and checkpoints tables, and
what each rung changes versus its parent.

Accuracies become % as they are read, so every table, figure and page shows the same unit.

The headline rule (RULE, shown on the page): every choice is made on val, every result is
reported on test. An experiment's checkpoint is its best on val; the best experiment is the one
whose checkpoint has the best val accuracy; the number reported is plain test accuracy (one pass,
no TTA) at that checkpoint, the same basis for every experiment. Evaluation runs TTA on the test
split only, so choosing between plain and TTA by their test accuracy would select on the test
set: the TTA vote is its own column (and Δ), never a stand-in for the plain number.

Noise: every accuracy counted on val or test images has its 95% Wilson interval, counted from
the per-image predictions evaluation keeps (eval/epoch_NNN.npz, see ladder.predictions); each
rung's Δ versus its parent is tested on the same test images (significance.compare_to_parent)
and marked when it is within noise; the test-picked checkpoint's gain has its interval
(significance.picked_gap). Seed replicates (`replicate_of`) fold into their experiment's row:
means over the set, the sd of its test accuracy, and every replicate in the comparisons.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ladder import config, digest, io, manifest, predictions, provenance, stages
from ladder.report import npz as report_npz
from ladder.report import significance

# The columns the report reads; training writes more.
HISTORY_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]
STEPS_COLUMNS = ["step", "epoch", "lr", "loss", "acc"]
REFERENCE_KEYS = ("train", "val", "test", "test_plain")

# What an interval is, said once: the columns' descriptions and the page use it.
WILSON = (
    "95% Wilson score interval over the images it was counted on (for several seed replicates: "
    "of their mean count); it covers the sampling of images only, not the seed"
)
# ladder.csv's columns and what each means (shown on the page; other tools read these names).
LADDER_COLUMNS: dict[str, str] = {
    "rung": "position in the report, from 1",
    "experiment": "experiment name; with seed replicates, the experiment they repeat",
    "parent": "the experiment this one is a diff of (its base), empty for a root",
    "changes": "settings that differ from the parent's (defaults a key takes on are not changes); "
    "one that starts with + or - has a ' before it, as every text cell a spreadsheet would run as "
    "a formula",
    "replicates": "runs this row stands for: 1, or the experiment and its seed replicates "
    "(params.yaml `replicate_of`) in the report. With more than 1, every accuracy and Δ is the "
    "mean over the runs, each run at its own val-picked checkpoint; best_epoch and "
    "test_picked_epoch are the experiment's own",
    "replicate_names": "the seed replicates folded into this row, space-separated; empty "
    "without (each is an experiment of its own in checkpoints.csv)",
    "epochs": "epochs the settings ask for",
    "stopped_early": "the epoch early stopping (`early_stopping`) ended the run at, its last "
    "checkpoint; empty: it ran every epoch. The experiment's own, with seed replicates",
    "best_epoch": "the val-picked checkpoint: highest val accuracy, ties to the earliest epoch",
    "train_acc": "train accuracy (%) in that epoch (running, over augmented batches: no interval)",
    "val_acc": "val accuracy (%) at the val-picked checkpoint",
    "val_acc_low": f"lower end of val_acc's {WILSON}",
    "val_acc_high": "upper end of the same interval",
    "test_acc": "test accuracy (%) at the val-picked checkpoint, no TTA: the experiment's result",
    "test_acc_low": f"lower end of test_acc's {WILSON}",
    "test_acc_high": "upper end of the same interval",
    "test_acc_sd": "sample standard deviation (ddof 1) of test_acc over the seed replicates, in "
    "percentage points: how much the result moves with the seed; empty for a single run",
    "test_acc_tta": "test accuracy (%) of the TTA majority vote at the same checkpoint; empty "
    "without TTA",
    "test_acc_tta_low": "lower end of test_acc_tta's 95% Wilson interval (as test_acc_low)",
    "test_acc_tta_high": "upper end of the same interval",
    "test_acc_tta_mean": "test accuracy (%) of the mean TTA probabilities (argmax of their "
    "average); empty without TTA",
    "test_acc_tta_mean_low": "lower end of test_acc_tta_mean's 95% Wilson interval",
    "test_acc_tta_mean_high": "upper end of the same interval",
    "delta_test_vs_parent": "test_acc minus the parent's test_acc (percentage points): no TTA on "
    "either side, on every row; empty without a parent in the report",
    "delta_low": "lower end of the 95% interval of delta_test_vs_parent (pp). One run on each "
    "side: a paired bootstrap over the test images (2,000 resamples, percentile). Seed "
    "replicates on both sides: Welch's t interval of the difference of the mean accuracies; on "
    "one side only: Student's, the variance pooled; a t interval is kept to -100..+100 pp, the "
    "differences two accuracies can have",
    "delta_high": "upper end of the same interval",
    "p_vs_parent": "two-sided p-value of that change: McNemar's exact test on the test images "
    "where the two runs disagree (one run on each side), else the t-test of delta_low",
    "within_noise": "true when p_vs_parent >= 0.05 or the interval of the change contains 0: "
    "the change is not shown to be real",
    "delta_method": "the rule that gave delta_low, delta_high and p_vs_parent: mcnemar (one "
    "run per side), welch or student (seed replicates)",
    "delta_tta_vs_parent": "test_acc_tta minus the parent's test_acc_tta (percentage points); "
    "only where both use TTA",
    "delta_tta_low": "lower end of the 95% interval of delta_tta_vs_parent, by the same rule",
    "delta_tta_high": "upper end of the same interval",
    "p_tta_vs_parent": "p-value of delta_tta_vs_parent, by the same rule",
    "tta_within_noise": "within_noise for delta_tta_vs_parent",
    "best": "true for the best experiment: highest val_acc (ties: the earlier rung)",
    "ref_train": "the seed's reported train accuracy (%)",
    "ref_val": "the seed's reported val accuracy (%)",
    "ref_test": "the seed's reported test accuracy (%), with TTA where the seed used it",
    "ref_test_plain": "the seed's reported test accuracy (%) without TTA, where it gave both",
    "ref_test_picked_epoch": "epoch of a checkpoint the seed picked by its test accuracy",
    "ref_test_picked_test": "the seed's test accuracy (%) of that checkpoint",
    "test_picked_epoch": "our checkpoint with the highest test accuracy, no TTA (ties: the "
    "earliest): selected on the test set, for comparison only",
    "test_picked_test": "its test accuracy (%), no TTA: optimistic, selected on the test set "
    "(no interval of its own: see picked_gap)",
    "picked_gap": "test_picked_test minus test_acc (percentage points, >= 0): how much picking "
    "the checkpoint by its test accuracy flatters the result",
    "picked_gap_low": "lower end of picked_gap's 95% interval: a paired bootstrap over the test "
    "images (1,000 resamples, percentile) that picks the checkpoint on test again in every "
    "resample",
    "picked_gap_high": "upper end of the same interval",
    "description": "one line from params.yaml",
}
# Accuracy column -> (its count of correct images, the images counted): its interval's inputs.
INTERVALS = {
    "val_acc": ("val_correct", "val_images"),
    "test_acc": ("test_correct", "test_images"),
    "test_acc_tta": ("tta_correct", "test_images"),
    "test_acc_tta_mean": ("tta_mean_correct", "test_images"),
}
CHECKPOINT_COLUMNS = [
    "experiment", "epoch", "train_acc",
    *(f"{column}{end}" for column in INTERVALS for end in ("", "_low", "_high")),
    "tta_passes", "train_loss", "val_loss", "test_loss", "val_picked", "test_picked",
]  # fmt: skip

ROOT = "—"  # `changes` of an experiment without a parent


# ----------------------------------------------------------------------------------------------
# Reading the stages' files


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A file whose structure surprises us fails with an error that names it."""
    try:
        yield
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
        if str(e).startswith(str(path)):  # says what is wrong already
            raise
        raise ValueError(f"{path}: malformed ({type(e).__name__}: {e})") from None


def _pct(value) -> float:
    """A fraction in [0, 1] (or null) as a percentage (or NaN)."""
    return math.nan if value is None else 100.0 * float(value)


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV file ({e})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {', '.join(missing)}")
    with _reading(path):
        # Column by column: the frame's astype, twice, was 3/4 of reading a run's small CSVs.
        table = {c: frame[c].astype(float) for c in columns}
        table["epoch"] = table["epoch"].astype(int)
        return pd.DataFrame(table)


# The prepared files the report reads (labels, class names, a few train images), and the files
# of a run it reads that the checkpoints' manifest vouches for.
DATA_FILES = ("val_y.npy", "test_y.npy", "classes.json", "train_x.npy")
RUN_TABLES = ("history.csv", "steps.csv")


def read_selection(path: str | Path) -> list[str]:
    path = Path(path)
    names = provenance.read_record(path)
    with _reading(path):
        names = names["experiments"]
        if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise ValueError(f"{path}: `experiments` must list one or more distinct names")
    return list(names)


def read_classes(data: str | Path) -> dict[int, str]:
    """Class index -> display name (the first of Tiny ImageNet's comma-separated synonyms)."""
    path = Path(data) / "classes.json"
    classes = io.read_json(path)
    with _reading(path):
        return {int(c["index"]): str(c["name"]).split(",")[0].strip() for c in classes}


def read_images(data: str | Path) -> np.ndarray:
    """The train split's images (uint8 NHWC), memory-mapped: the report reads a handful."""
    path = Path(data) / "train_x.npy"
    try:
        x = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable .npy file ({e})") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or not len(x):
        raise ValueError(f"{path}: expected uint8 images N×H×W×3, got {x.dtype} {x.shape}")
    return x


def _reference(meta: dict) -> dict:
    """report.json's reference numbers as flat ref_* values (None where not reported)."""
    ref = meta["reference"]
    picked = ref.get("test_picked") or {}
    return {
        **{f"ref_{k}": ref.get(k) for k in REFERENCE_KEYS},
        "ref_test_picked_epoch": picked.get("epoch"),
        "ref_test_picked_test": picked.get("test"),
        "note": ref.get("note") or "",
    }


def read_labels(data: str | Path) -> dict[str, np.ndarray]:
    """The val and test labels (val_y.npy, test_y.npy): what the predictions are counted
    against."""
    labels = {}
    for split in ("val", "test"):
        path = Path(data) / f"{split}_y.npy"
        try:
            y = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: file not found") from None
        except (ValueError, OSError) as e:
            raise ValueError(f"{path}: not a readable .npy file ({e})") from None
        if y.ndim != 1 or y.dtype.kind not in "iu" or not len(y):
            raise ValueError(f"{path}: expected 1-D integer labels, got {y.dtype} {y.shape}")
        labels[split] = y
    return labels


# An evaluation's per-class entries (200 for Tiny ImageNet) are most of its JSON, and the report
# shows those of one checkpoint per experiment. In the layout evaluate writes (io.json_text: two-
# space indents, so a top-level key is the only thing at two spaces, and no string holds a raw
# newline) the top-level array is cut out by its first and last lines and parsed only for the
# checkpoint shown: 0.1 ms per checkpoint. JSON in any other layout is parsed whole.
_PER_CLASS = b'\n  "per_class": '
_OPENS, _CLOSES = _PER_CLASS + b"[\n", b"\n  ]"


def _split_per_class(data: bytes) -> tuple[bytes, bytes | None]:
    """(the evaluation's JSON with `per_class` null, the bytes of its per_class array); (`data`,
    None) for JSON in another layout."""
    start = data.find(_OPENS)
    end = data.find(_CLOSES, start) if start >= 0 else -1
    if end < 0:
        return data, None
    value, end = start + len(_PER_CLASS), end + len(_CLOSES)
    return data[:value] + b"null" + data[end:], data[value:end]


def _read_eval(
    folder: str, name: str, epoch: int, labels: dict[str, np.ndarray], listed: dict
) -> tuple[dict, list[dict] | bytes, dict[str, np.ndarray]]:
    """One checkpoint's evaluation (epoch_NNN.json and .npz in the eval folder `folder`): its
    row of the checkpoints table, its per-class entries (as the JSON holds them, or the bytes of
    the array, `_split_per_class`: `_per_class` makes rows of the one checkpoint the report
    shows), and its per-image correctness (kind -> bool array) from the predictions beside it.
    Each file is read once and checked against its digest in the eval folder's manifest
    (`listed`) before it is parsed. Paths are strings here: pathlib's parsing was a tenth of a
    checkpoint's time (ten paths each, 44,455 checkpoints at 1,000 experiments)."""
    stem = f"epoch_{epoch:03d}"
    path = f"{folder}/{stem}.json"
    data, per_class = _split_per_class(manifest.checked_bytes(folder, f"{stem}.json", listed))
    result = io.read_json_bytes(path, data, int64=True)
    with _reading(path):
        if result["epoch"] != epoch:
            raise ValueError(f"{path}: holds epoch {result['epoch']}, expected {epoch}")
        tta = result["tta"] or {}
        images = {split: int(result["images"][split]) for split in ("val", "test")}
        accuracy = {
            "val_plain": result["val"]["acc"],
            "test_plain": result["test"]["acc"],
            "test_tta": tta.get("vote_acc"),
        }
        row = {
            "experiment": name,
            "epoch": epoch,
            "val_acc": _pct(result["val"]["acc"]),
            "val_loss": float(result["val"]["loss"]),
            "test_acc": _pct(result["test"]["acc"]),
            "test_loss": float(result["test"]["loss"]),
            "test_acc_tta": _pct(tta.get("vote_acc")),
            "test_acc_tta_mean": _pct(tta.get("mean_acc")),
            "tta_passes": int(tta.get("passes", 0)),
            "val_images": images["val"],
            "test_images": images["test"],
        }
        if per_class is None:
            per_class = result["per_class"]
            if not isinstance(per_class, list):
                raise TypeError("per_class is not a list")
    for split, n in images.items():
        if len(labels[split]) != n:
            raise ValueError(
                f"{path}: evaluated {n} {split} images, the prepared data has "
                f"{len(labels[split])}: rerun the evaluation"
            )
    # The test predictions only: the report compares runs on the test images; val's count comes
    # from the JSON (`ladder evaluate` checks every member when it caches them).
    npz = f"{folder}/{stem}{predictions.SUFFIX}"
    predicted = report_npz.read(
        npz,
        predictions.expected(images, tta=bool(tta)),
        kinds=("test_plain", "test_tta"),
        data=manifest.checked_bytes(folder, f"{stem}{predictions.SUFFIX}", listed),
    )
    correct = {}
    for kind, pred in predicted.items():
        correct[kind] = pred == labels[predictions.SPLITS[kind]]
        count, n = int(np.count_nonzero(correct[kind])), len(pred)
        if round(float(accuracy[kind]) * n) != count:  # the JSON's float32 mean of the same
            raise ValueError(
                f"{npz}: {kind} predictions are {count}/{n} right, but {stem}.json says "
                f"{float(accuracy[kind]):.6f}: the files come from different evaluations; rerun "
                "the evaluation"
            )
    row |= {
        # From the JSON's accuracy, exact: a float32 mean of the same count of right images.
        "val_correct": round(float(accuracy["val_plain"]) * images["val"]),
        "test_correct": int(np.count_nonzero(correct["test_plain"])),
        "tta_correct": int(np.count_nonzero(correct["test_tta"])) if tta else math.nan,
        # Not kept per image: its count from the JSON's accuracy, as val's.
        "tta_mean_correct": round(float(tta["mean_acc"]) * images["test"]) if tta else math.nan,
    }
    return row, per_class, correct


def _per_class(path: Path, name: str, epoch: int, entries: list | bytes) -> list[dict]:
    if isinstance(entries, bytes):  # the array cut out of the JSON (_split_per_class)
        entries = io.read_json_bytes(path, entries, int64=True)
    with _reading(path):
        if not isinstance(entries, list):
            raise TypeError("per_class is not a list")
        return [
            {
                "experiment": name,
                "epoch": epoch,
                "index": int(c["index"]),
                "count": int(c["count"]),
                "test_acc": _pct(c["test_acc"]),
                "tta_acc": _pct(c["tta_acc"]),
            }
            for c in entries
        ]


def _val_pick(rows: list[dict]) -> int:
    """The index of a run's val-picked checkpoint among its rows (ascending epochs): the highest
    val accuracy, ties to the earliest epoch, as `picked_on_val`."""
    return max(range(len(rows)), key=lambda i: (rows[i]["val_acc"], -rows[i]["epoch"]))


@dataclass(frozen=True)
class Correct:
    """One run's per-image correctness on the test images at its val-picked checkpoint, what its
    comparisons with other runs are counted from. Its picked gap's bootstrap counts all its
    checkpoints as they are read (Runs.gaps): a report holds two rows of test images per run,
    not one per checkpoint (at 1,000 experiments of the shipped ladder's shape, 20 MB instead of
    680)."""

    epoch: int  # the val-picked checkpoint's
    test: np.ndarray  # bool (test images,), one plain pass
    tta: np.ndarray | None  # bool (test images,), the TTA vote; None without TTA

    def at(self, epoch: int, tta: bool = False) -> np.ndarray:
        """Correctness of the val-picked checkpoint, of `epoch` (plain, or the TTA vote)."""
        if epoch != self.epoch:
            raise ValueError(f"per-image correctness is kept for epoch {self.epoch}, not {epoch}")
        return self.tta if tta else self.test


@dataclass(frozen=True)
class Runs:
    """Everything the report shows about the selected experiments, in ladder order."""

    names: list[str]
    settings: dict[str, dict]  # train.json with evaluate.json under "tta": what `changes` compares
    meta: dict[str, dict]  # report.json: base, description, replicate_of, the flat ref_* numbers
    run: dict[str, dict]  # config.json, written by training
    history: pd.DataFrame  # history.csv rows of every run, plus `experiment`
    steps: pd.DataFrame  # steps.csv rows of every run, plus `experiment`
    checkpoints: pd.DataFrame  # one row per evaluated checkpoint (eval/epoch_NNN.json)
    per_class: pd.DataFrame  # one row per (experiment, class) at its val-picked checkpoint
    correct: dict[str, Correct]  # per-image correctness (eval/epoch_NNN.npz), by experiment
    gaps: dict[str, significance.RunGap]  # each run's part of its picked gap, by experiment

    @cached_property
    def sets(self) -> dict[str, list[str]]:
        """Each ladder row's experiment -> the runs it stands for: itself, then its seed
        replicates in the report, in report order. A replicate whose experiment is not in the
        report is a row of its own."""
        rows = {n: [n] for n in self.names if self.meta[n]["replicate_of"] not in self.names}
        for name in self.names:
            if self.meta[name]["replicate_of"] in rows:
                rows[self.meta[name]["replicate_of"]].append(name)
        return rows

    @cached_property
    def row_of(self) -> dict[str, str]:
        """Experiment -> the ladder row that shows it (a replicate: its experiment's)."""
        return {member: row for row, members in self.sets.items() for member in members}


def read_runs(
    names: list[str], configs: str | Path, runs: str | Path, labels: dict[str, np.ndarray]
) -> Runs:
    # Each run's picked gap is counted as its checkpoints are read, on resamples drawn once.
    bootstrap = significance.PickedGapBootstrap(len(labels["test"]))
    parts = [
        _read_experiment(name, Path(configs) / name, Path(runs) / name, labels, bootstrap)
        for name in names
    ]
    settings, meta, run, history, steps, checkpoints, per_class, correct = zip(*parts, strict=True)
    return Runs(
        names=list(names),
        settings=dict(zip(names, settings, strict=True)),
        meta=dict(zip(names, meta, strict=True)),
        run=dict(zip(names, run, strict=True)),
        history=pd.concat(history, ignore_index=True),
        steps=pd.concat(steps, ignore_index=True),
        checkpoints=pd.DataFrame([row for rows in checkpoints for row in rows]),
        per_class=pd.DataFrame([row for rows in per_class for row in rows]),
        correct=dict(zip(names, correct, strict=True)),
        gaps=dict(zip(names, bootstrap.results(), strict=True)),
    )


def _check_evaluated_with(evals: Path, settings: Path) -> None:
    """The evaluations were made with the settings file the report shows (what the eval folder
    records of its making, ladder.manifest.made_with), not with an earlier version of it."""
    made = {k: v for k, v in manifest.made_with(evals).items() if Path(k).name == settings.name}
    now = digest.file_digest(settings)
    if made and now not in made.values():
        raise ValueError(
            f"{evals}: evaluated with other settings than {settings} now holds; "
            f"{stages.regenerate(evals / 'MANIFEST.json')}"
        )


def _read_experiment(
    name: str,
    configs: Path,
    run: Path,
    labels: dict[str, np.ndarray],
    bootstrap: significance.PickedGapBootstrap,
) -> tuple:
    train = provenance.read_record(configs / "train.json")
    tta = provenance.read_record(configs / "evaluate.json")
    report = provenance.read_record(configs / "report.json")
    with _reading(configs / "report.json"):
        meta = {
            "base": report["base"] or "",
            "description": report["description"],
            "replicate_of": report["replicate_of"] or "",
            **_reference(report),
        }
    run_config = provenance.read_record(run / "config.json")
    with _reading(run / "config.json"):
        if run_config["settings"] != train:
            raise ValueError(
                f"{run / 'config.json'}: trained with other settings than {configs / 'train.json'}"
            )
        epochs = sorted(int(e) for e in run_config["checkpoint_epochs"])
        if not epochs:
            raise ValueError(f"{run / 'config.json'}: no checkpoint_epochs")
    listed = manifest.read(run / "eval")  # each file's digest is checked as it is read
    _check_evaluated_with(run / "eval", configs / "evaluate.json")

    history = _read_csv(run / "history.csv", HISTORY_COLUMNS)
    missing = sorted(set(epochs) - set(history["epoch"]))
    if missing:
        raise ValueError(f"{run / 'history.csv'}: no row for checkpoint epoch(s) {missing}")
    history[["train_acc", "val_acc"]] *= 100
    history.insert(0, "experiment", name)
    steps = _read_csv(run / "steps.csv", STEPS_COLUMNS)
    steps["acc"] *= 100
    steps.insert(0, "experiment", name)

    evals = [_read_eval(str(run / "eval"), name, e, labels, listed) for e in epochs]
    rows = [row for row, _, _ in evals]
    has_tta = {"test_tta" in correct for _, _, correct in evals}
    if len(has_tta) > 1:
        raise ValueError(f"{run / 'eval'}: some checkpoints were evaluated with TTA, some without")
    pick = _val_pick(rows)
    _, entries, at_pick = evals[pick]
    path = run / "eval" / f"epoch_{epochs[pick]:03d}.json"
    per_class = _per_class(path, name, epochs[pick], entries)
    bootstrap.add([c["test_plain"] for _, _, c in evals], pick)
    correct = Correct(epochs[pick], at_pick["test_plain"], at_pick.get("test_tta"))
    return {**train, "tta": tta}, meta, run_config, history, steps, rows, per_class, correct


# ----------------------------------------------------------------------------------------------
# The ladder and checkpoints tables


def _picked(checkpoints: pd.DataFrame, score: pd.Series) -> pd.DataFrame:
    """Each experiment's checkpoint with the highest `score`; ties go to the earliest epoch."""
    ranked = checkpoints.assign(_score=score).sort_values(
        ["_score", "epoch"], ascending=[False, True]
    )
    return ranked.drop_duplicates("experiment").drop(columns="_score").set_index("experiment")


def picked_on_val(runs: Runs) -> pd.DataFrame:
    """The checkpoint each experiment reports: its best on val (ties: earliest), by experiment."""
    return _picked(runs.checkpoints, runs.checkpoints["val_acc"])


def picked_on_test(runs: Runs) -> pd.DataFrame:
    """The checkpoint with the best plain test accuracy: selected on the test set, only for
    comparison with numbers picked that way (the seed's rung 26)."""
    return _picked(runs.checkpoints, runs.checkpoints["test_acc"])


# Per-checkpoint columns a ladder row averages over its runs (accuracies and their counts).
_AVERAGED = [
    "val_acc", "test_acc", "test_acc_tta", "test_acc_tta_mean",
    *(count for count, _ in INTERVALS.values()),
]  # fmt: skip


def with_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with <accuracy>_low and <accuracy>_high (%) for every accuracy in INTERVALS,
    from its count and images columns: the Wilson interval, vectorised."""
    table = table.copy()
    for column, (count, images) in INTERVALS.items():
        low, high = significance.wilson_intervals(table[count], table[images])
        table[f"{column}_low"], table[f"{column}_high"] = 100 * low, 100 * high
    return table


def _set_means(runs: Runs, best: pd.DataFrame, by_test: pd.DataFrame) -> pd.DataFrame:
    """One row per ladder row, by experiment: its runs' means at their val-picked checkpoints
    (a single run: its own numbers), the sd of test_acc, and the intervals."""
    history = runs.history.set_index(["experiment", "epoch"])["train_acc"]
    rows = {}
    for name, members in runs.sets.items():
        picks = best.loc[members]
        rows[name] = {
            **picks[_AVERAGED].astype(float).mean(skipna=False),
            "val_images": picks["val_images"].iloc[0],
            "test_images": picks["test_images"].iloc[0],
            "train_acc": np.mean([history.loc[(m, picks.loc[m, "epoch"])] for m in members]),
            "test_acc_sd": significance.replicate_summary(picks["test_acc"]).sd,
            "test_picked_test": by_test.loc[members, "test_acc"].mean(),
        }
    return with_intervals(pd.DataFrame.from_dict(rows, orient="index"))


def compare(
    runs: Runs, best: pd.DataFrame, child: list[str], parent: list[str], tta: bool = False
) -> significance.Comparison | None:
    """Runs `child` versus runs `parent` on the same test images, each at its val-picked
    checkpoint (plain, or the TTA vote: None unless every run has TTA); see
    significance.compare_to_parent."""
    if tta and any(runs.correct[m].tta is None for m in child + parent):
        return None
    child_correct, parent_correct = (
        [runs.correct[m].at(best.loc[m, "epoch"], tta) for m in members]
        for members in (child, parent)
    )
    return significance.compare_to_parent(child_correct, parent_correct)


# The Δ columns of each basis (plain, TTA vote): accuracy compared, Δ, interval, p, noise mark.
_DELTA_COLUMNS = {
    False: ("test_acc", "delta_test_vs_parent", "delta_low", "delta_high", "p_vs_parent",
            "within_noise"),
    True: ("test_acc_tta", "delta_tta_vs_parent", "delta_tta_low", "delta_tta_high",
           "p_tta_vs_parent", "tta_within_noise"),
}  # fmt: skip


def _versus_parent(runs: Runs, best: pd.DataFrame, means: pd.DataFrame, name: str) -> dict:
    """The Δ columns of `name`'s row: its change versus the parent's row on one basis each
    (plain minus plain, TTA vote minus TTA vote), with interval, p-value and noise mark; empty
    without a parent in the report (or, for the TTA basis, without TTA on both sides)."""
    parent = runs.row_of.get(runs.meta[name]["base"])
    columns: dict = {"delta_method": ""}
    for tta, (accuracy, delta, low, high, p, noise) in _DELTA_COLUMNS.items():
        result = None
        if parent is not None and parent != name:
            result = compare(runs, best, runs.sets[name], runs.sets[parent], tta)
        if result is None:
            columns |= {delta: math.nan, low: math.nan, high: math.nan, p: math.nan, noise: None}
            continue
        columns |= {
            delta: means.loc[name, accuracy] - means.loc[parent, accuracy],
            low: 100 * result.low,
            high: 100 * result.high,
            p: result.pvalue,
            noise: result.within_noise,
        }
        if not tta:
            columns["delta_method"] = result.method
    return columns


def _picked_gaps(runs: Runs) -> dict[str, dict[str, float]]:
    """Each row's gain from picking its runs' checkpoints on test instead (pp, the mean over its
    runs) with its interval: significance.picked_gaps, every row on the same resamples (each
    run's part counted as it was read, Correct.gap)."""
    sets = runs.sets
    gaps = [significance.set_gap([runs.gaps[m] for m in ms]) for ms in sets.values()]
    return {
        name: {
            "picked_gap": 100 * gap.gap,
            "picked_gap_low": 100 * gap.low,
            "picked_gap_high": 100 * gap.high,
        }
        for name, gap in zip(sets, gaps, strict=True)
    }


def ladder_table(runs: Runs) -> pd.DataFrame:
    """One row per experiment, a set of seed replicates in one row (its experiment's), in ladder
    order; accuracies in % at the val-picked checkpoint (means over a set)."""
    best, by_test = picked_on_val(runs), picked_on_test(runs)
    means, gaps = _set_means(runs, best, by_test), _picked_gaps(runs)
    rows = []
    for rung, (name, members) in enumerate(runs.sets.items(), 1):
        meta = runs.meta[name]
        rows.append(
            {
                "rung": rung,
                "experiment": name,
                "parent": meta["base"],
                "changes": _changes_text(runs, name),
                "replicates": len(members),
                "replicate_names": " ".join(members[1:]),
                "epochs": runs.settings[name]["epochs"],
                "stopped_early": runs.run[name].get("stopped_early", {}).get("epoch"),
                "best_epoch": best.loc[name, "epoch"],
                **means.loc[name].to_dict(),
                **_versus_parent(runs, best, means, name),
                "best": False,
                **{k: meta[k] for k in LADDER_COLUMNS if k.startswith("ref_")},
                "test_picked_epoch": by_test.loc[name, "epoch"],
                **gaps[name],
                "description": meta["description"],
            }
        )
    ints = [
        "rung", "replicates", "epochs", "stopped_early", "best_epoch", "ref_test_picked_epoch",
        "test_picked_epoch",
    ]  # fmt: skip
    refs = [c for c in LADDER_COLUMNS if c.startswith("ref_") and c not in ints]  # None -> NaN
    table = pd.DataFrame(rows, columns=list(LADDER_COLUMNS))
    table.loc[best_row(table), "best"] = True
    flags = {"within_noise": "boolean", "tta_within_noise": "boolean"}
    return table.astype({c: "Int64" for c in ints} | {c: float for c in refs} | flags)


def _changes_text(runs: Runs, name: str) -> str:
    parent = runs.meta[name]["base"]
    if not parent:
        return ROOT
    if parent not in runs.settings:
        return f"(parent {parent} is not in this report)"
    return changes(runs.settings[parent], runs.settings[name])


def checkpoints_table(runs: Runs) -> pd.DataFrame:
    """One row per (experiment, checkpoint) in ladder order, with the history's train numbers at
    that epoch (the running mean over the epoch's augmented batches) and every accuracy's
    interval."""
    train = runs.history[["experiment", "epoch", "train_acc", "train_loss"]]
    table = runs.checkpoints.merge(train, on=["experiment", "epoch"], how="left", validate="1:1")
    keys = list(zip(table["experiment"], table["epoch"], strict=True))
    for column, picked in (
        ("val_picked", picked_on_val(runs)),
        ("test_picked", picked_on_test(runs)),
    ):
        chosen = set(zip(picked.index, picked["epoch"], strict=True))
        table[column] = [key in chosen for key in keys]
    return with_intervals(table)[CHECKPOINT_COLUMNS]


def best_row(ladder: pd.DataFrame):
    """The index of the best experiment's row: the highest val accuracy at the val-picked
    checkpoint (ties: the earlier rung). Chosen on val, as checkpoints are: picking the highest
    test accuracy among many rungs would select on the test set."""
    return ladder["val_acc"].astype(float).idxmax()


def best_experiment(ladder: pd.DataFrame) -> pd.Series:
    """The best experiment's ladder row (see `best_row`); its result is its plain `test_acc`."""
    return ladder.loc[best_row(ladder)]


def runner_up(ladder: pd.DataFrame) -> pd.Series | None:
    """The runner-up's ladder row by the same rule: the best of the other rows (highest val
    accuracy, ties: the earlier rung); None with a single row."""
    rest = ladder.drop(index=best_row(ladder))
    return None if rest.empty else rest.loc[best_row(rest)]


def versus_runner_up(
    runs: Runs, ladder: pd.DataFrame
) -> tuple[pd.Series, significance.Comparison] | None:
    """The runner-up's row and the best experiment's test accuracy compared with it (every run
    of either at its val-picked checkpoint, as for a parent); None with a single row."""
    second = runner_up(ladder)
    if second is None:
        return None
    first = best_experiment(ladder)["experiment"]
    sets = runs.sets
    return second, compare(runs, picked_on_val(runs), sets[first], sets[second["experiment"]])


def seed_best(ladder: pd.DataFrame) -> dict | None:
    """The best test number the seed reported for these experiments, or None without any."""
    candidates = [
        (row[column], row["experiment"], column == "ref_test_picked_test")
        for _, row in ladder.iterrows()
        for column in ("ref_test", "ref_test_picked_test")
        if not pd.isna(row[column])
    ]
    if not candidates:
        return None
    value, experiment, on_test = max(candidates, key=lambda c: c[0])
    return {"test": value, "experiment": experiment, "picked_on_test": on_test}


def metrics(ladder: pd.DataFrame) -> dict:
    """metrics.json for `dvc metrics show/diff`: the best experiment by name, then every
    experiment by name; accuracies in % (2 decimals), no NaN."""

    def numbers(row: pd.Series, columns: tuple[str, ...]) -> dict:
        return {c: round(float(row[c]), 2) for c in columns if not pd.isna(row[c])}

    columns = (
        "train_acc",
        "val_acc",
        "test_acc",
        "test_acc_tta",
        "delta_test_vs_parent",
        "delta_tta_vs_parent",
    )
    best = best_experiment(ladder)
    return {
        # Keyed by name (rung numbers shift with the selection); the same names as each
        # experiment's (test_acc: plain, as on the page).
        "best": {
            "experiment": best["experiment"],
            "best_epoch": int(best["best_epoch"]),
            **numbers(best, ("val_acc", "test_acc", "test_acc_tta")),
        },
        "experiments": {
            row["experiment"]: {"best_epoch": int(row["best_epoch"]), **numbers(row, columns)}
            for _, row in ladder.iterrows()
        },
    }


def map_text(table: pd.DataFrame, escape: Callable[[str], str]) -> pd.DataFrame:
    """A copy of `table` with `escape` applied to every text cell; numbers, flags and missing
    values stay as they are."""
    table = table.copy()
    for column in table.select_dtypes(include=["object", "string"]).columns:
        table[column] = table[column].map(lambda v: escape(v) if isinstance(v, str) else v)
    return table


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(text: str) -> str:
    """`text` as a CSV cell that stays one text cell: a leading quote where a spreadsheet would
    run it as a formula (a description `=HYPERLINK(...)`, a change `-blur`), and carriage returns
    as newlines, which the writer quotes (a bare one it leaves as is, and readers end the row
    there)."""
    text = f"'{text}" if text.startswith(FORMULA_STARTS) else text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def write_csv(table: pd.DataFrame, path: Path) -> None:
    """Every number to 12 significant digits (these tables are for programs: DVC plots, pandas;
    a learning rate of 3e-5 is not 0.0, and 55% is not 55.00000000000001), missing values as
    empty cells, text cells made `csv_safe` (numbers stay numbers)."""
    map_text(table, csv_safe).to_csv(path, index=False, lineterminator="\n", float_format="%.12g")


# ----------------------------------------------------------------------------------------------
# Changes versus the parent

_MISSING = object()
# Their keys read well without the section (lr, t_max) and are unambiguous in today's schema;
# `_labels` keeps the prefix should that ever change.
_SHORT_SECTIONS = ("optimizer", "schedule")


def changes(parent: dict | None, child: dict) -> str:
    """What `child` changes versus `parent`, e.g. `model.dropout 0.6→0.7; -blur`.

    Both are resolved settings: train.json with evaluate.json under "tta". Keys come in the
    schema's order (training settings, then tta): a section's new `name` first
    (`model resnet18→efficientnet_v2_s`), changed leaves as `key old→new`, added or removed
    ones as `+key=value` / `-key`, unless the value is the schema's default: a key that only
    comes with a new model or schedule (`model.shakedrop.p_drop` of 0, `eta_min` of 0) changes
    nothing, nor does a `t_max` equal to the run's epochs (its default). Augmentations by op:
    `+blur(p=0.3, kernel=3, ...)` when switched on, `-blur` when off, else
    `translate.p 0.6→0.8`. Optimizer and schedule keys drop
    their section (`lr`, `t_max`). None as parent: the root, "—".
    """
    if parent is None:
        return ROOT
    old, new = dict(config.iter_keys(parent)), dict(config.iter_keys(child))
    keys = sorted(old.keys() | new.keys(), key=_rank)
    labels = _labels(keys)
    items, ops_done = [], set()
    for key in keys:
        section, _, rest = key.partition(".")
        if section == "augment":  # by op; `augment` alone is `{}`, every op off
            op = rest.split(".")[0]
            if rest and op not in ops_done:
                ops_done.add(op)
                ops = (parent.get("augment", {}).get(op), child.get("augment", {}).get(op))
                items += _op_changes(op, *ops)
            continue
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if a == b or (_MISSING in (a, b) and _is_default(key, b if a is _MISSING else a)):
            continue
        if key == "schedule.t_max" and _follows_epochs(a, parent) and _follows_epochs(b, child):
            continue  # t_max at its default, the run's epochs: their change is listed already
        if rest == "name" and _MISSING not in (a, b):
            items.append(f"{section} {_fmt(a)}→{_fmt(b)}")
        else:
            items.append(_leaf(labels[key], a, b))
    return "; ".join(items) or "no change"


def _follows_epochs(t_max, settings: dict) -> bool:
    return t_max is _MISSING or t_max == settings.get("epochs")


def _leaf(label: str, a, b) -> str:
    if a is _MISSING:
        return f"+{label}={_fmt(b)}"
    if b is _MISSING:
        return f"-{label}"
    return f"{label} {_fmt(a)}→{_fmt(b)}"


def _op_changes(op: str, a, b) -> list[str]:
    """One augmentation's change; `hflip` is a bare probability, the other ops are dicts."""
    scalar = not isinstance(a if a is not None else b, dict)
    a, b = ({"p": v or 0.0} if scalar else v or {} for v in (a, b))
    if not a.get("p") and b.get("p"):
        params = sorted(b, key=lambda k: _rank(f"augment.{op}.{k}"))
        return [f"+{op}({', '.join(f'{k}={_fmt(b[k])}' for k in params)})"]
    if a.get("p") and not b.get("p"):
        return [f"-{op}"]
    keys = sorted(a.keys() | b.keys(), key=lambda k: _rank(f"augment.{op}.{k}"))
    return [
        _leaf(op if scalar else f"{op}.{k}", a.get(k, _MISSING), b.get(k, _MISSING))
        for k in keys
        if a.get(k, _MISSING) != b.get(k, _MISSING)
    ]


def _labels(keys: list[str]) -> dict[str, str]:
    """Dotted key -> the name `changes` shows: optimizer/schedule keys without their section,
    unless that name would then stand for two keys."""
    short = {}
    for key in keys:
        section, _, rest = key.partition(".")
        short[key] = rest if section in _SHORT_SECTIONS and rest else key
    counts = Counter(short.values())
    return {key: name if counts[name] == 1 else key for key, name in short.items()}


def _fmt(value) -> str:
    """Compact: 0.0001, 1e-05, 10 (not 10.0), true, [30, 45]."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_fmt, value)) + "]"
    if value is None:
        return "null"
    return str(value)


@cache
def _properties(path: tuple[str, ...]) -> tuple[str, ...]:
    """Property names of the schema node at `path` below an experiment, in the schema's order.
    At the top, the evaluation keys (tta) go last: they are not training settings."""
    node = config.schema()["$defs"]["experiment"]
    for part in path:
        node = _node_properties(node).get(part, {})
    names = list(_node_properties(node))
    if not path:
        names = [n for n in names if n not in config.EVAL_KEYS] + list(config.EVAL_KEYS)
    return tuple(names)


def _is_default(key: str, value) -> bool:
    """Whether `value` is the schema's default for the dotted settings `key`."""
    node = config.schema()["$defs"]["experiment"]
    for part in key.split("."):
        node = _node_properties(node).get(part)
        if node is None:
            return False
    return "default" in _deref(node) and config.defaults(node) == value


def _deref(node: dict) -> dict:
    if "$ref" not in node:
        return node
    return {**config.schema()["$defs"][node["$ref"].rsplit("/", 1)[1]], **node}


def _node_properties(node: dict) -> dict:
    """A schema node's properties, those of its `oneOf` options included."""
    node = _deref(node)
    props = dict(node.get("properties", {}))
    for option in node.get("oneOf", []):
        for name, sub in option.get("properties", {}).items():
            props.setdefault(name, sub)
    return props


def _rank(key: str) -> tuple:
    """Sort key: each part's position in the schema, unknown parts after, alphabetically."""
    parts = key.split(".")
    rank = []
    for depth, part in enumerate(parts):
        known = _properties(tuple(parts[:depth]))
        rank.append((known.index(part), "") if part in known else (len(known), part))
    return tuple(rank)
