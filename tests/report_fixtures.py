"""Synthetic inputs of `ladder report`: the files configure, train and evaluate would write, for
three tiny experiments with hand-picked accuracies (so the tests know every expected number), and
optionally seed replicates of two of them.

Per-image predictions: `correct(name, split, epoch)` is the bool array the fixture's predictions
give on VAL/TEST images: a run with accuracy k/n gets a window of k consecutive images right,
starting at an offset of its own (OFFSETS), so two runs agree on most images and disagree on a
few at both ends, as real runs do; the tests count the expected statistics from these arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from ladder import config, io, manifest, predictions

# a -> b -> c. b: dropout up, blur off, TTA on; c: translation, and log_every beyond an epoch
# (20 images / batch 4 = 5 steps), so its steps.csv has no rows.
PARAMS = {
    "tta": {"passes": 0},
    "experiments": {
        "a": {
            "description": "root <rung> & co",
            "reference": {
                "train": 70,
                "val": 50,
                "test": 45.5,
                "test_picked": {"epoch": 2, "test": 49.06},
            },
            "model": {"name": "mynet", "blocks": 1, "width": 8, "dropout": 0.6},
            "augment": {"hflip": 0.0, "blur": {"p": 0.3, "kernel": 3}},
            "batch_size": 4,
            "epochs": 3,
            "log_every": 2,
        },
        "b": {
            "base": "a",
            "description": "dropout 0.7, no blur, TTA",
            "reference": {"note": "a note from the seed"},
            "model": {"dropout": 0.7},
            "augment": {"blur": {"p": 0.0}},
            "tta": {"passes": 2},
        },
        "c": {
            "base": "b",
            "description": "translation",
            "augment": {"translate": {"p": 0.5, "max": 0.125}},
            "log_every": 100,
        },
    },
}

# Fractions per epoch: a ties on val (epochs 2 and 3), b and c have TTA. b has the best val
# accuracy (epoch 2), c the best test accuracy at its val-picked checkpoint.
RESULTS = {
    "a": {"train": [0.3, 0.6, 0.7], "val": [0.2, 0.5, 0.5], "test": [0.1, 0.4, 0.6], "tta": None},
    "b": {
        "train": [0.4, 0.7, 0.8],
        "val": [0.4, 0.7, 0.6],
        "test": [0.5, 0.55, 0.5],
        "tta": [0.52, 0.58, 0.62],
    },
    "c": {
        "train": [0.4, 0.6, 0.9],
        "val": [0.3, 0.65, 0.66],
        "test": [0.4, 0.5, 0.56],
        "tta": [0.45, 0.57, 0.6],
    },
}

# Seed replicates: a in three runs (a, a_s1, a_s2), b in two (b, b_s1). The sets' test accuracies
# at their val-picked checkpoints: a 40, 42, 44 (mean 42); b 55, 57 (mean 56); c 56 (one run).
# b's set stays the best on val (mean 71), c the runner-up (66).
REPLICATES = {
    "a_s1": {"base": "a", "replicate_of": "a", "seed": 1, "description": "a, seed 1"},
    "a_s2": {"base": "a", "replicate_of": "a", "seed": 2, "description": "a, seed 2"},
    "b_s1": {"base": "b", "replicate_of": "b", "seed": 1, "description": "b, seed 1"},
}
REPLICATE_RESULTS = {
    "a_s1": {"train": [0.3, 0.6, 0.7], "val": [0.2, 0.52, 0.5], "test": [0.1, 0.42, 0.6],
             "tta": None},
    "a_s2": {"train": [0.3, 0.6, 0.8], "val": [0.25, 0.45, 0.51], "test": [0.1, 0.4, 0.44],
             "tta": None},
    "b_s1": {"train": [0.4, 0.7, 0.9], "val": [0.4, 0.6, 0.72], "test": [0.5, 0.5, 0.57],
             "tta": [0.5, 0.55, 0.6]},
}  # fmt: skip

CLASSES = ["goldfish, Carassius auratus", "bullfrog", "tabby cat", "school bus"]
IMAGES, IMAGE_SIZE = 20, 16  # train images (the steps per epoch), their size
VAL, TEST = 100, 100  # val and test images: every accuracy above is a whole count of them
OFFSETS = {"a": 0, "b": 5, "c": 10, "a_s1": 3, "a_s2": 7, "b_s1": 12}


def labels(split: str) -> np.ndarray:
    return np.arange(VAL if split == "val" else TEST) % len(CLASSES)


def correct(name: str, split: str, epoch: int, results: dict | None = None) -> np.ndarray:
    """Which images of `split` ("val", "test" or "tta") run `name` gets right at `epoch`: a window
    of round(accuracy * n) images from its offset on, wrapping around."""
    results = {**RESULTS, **REPLICATE_RESULTS, **(results or {})}[name]
    n = VAL if split == "val" else TEST
    k = round(results[split][epoch - 1] * n)
    out = np.zeros(n, dtype=bool)
    out[(OFFSETS[name] + np.arange(k)) % n] = True
    return out


def _predicted(name: str, split: str, epoch: int, results: dict) -> np.ndarray:
    """Class indices: the label where `correct`, the next class where not."""
    y = labels("val" if split == "val" else "test")
    return np.where(correct(name, split, epoch, results), y, (y + 1) % len(CLASSES))


def write_inputs(
    root: Path,
    names: list[str] | None = None,
    results: dict | None = None,
    replicates: bool = False,
) -> dict[str, Path]:
    """Write every input of build_report under `root`; return its path arguments. `results`
    replaces experiments' entries of RESULTS; `replicates` adds REPLICATES."""
    experiments = {**PARAMS["experiments"], **(REPLICATES if replicates else {})}
    params = config.Params.from_dict({**PARAMS, "experiments": experiments})
    results = {**RESULTS, **REPLICATE_RESULTS, **(results or {})}
    paths = {
        "selection": root / "configs" / "selection.json",
        "configs": root / "configs" / "experiments",
        "runs": root / "runs",
        "data": root / "data",
    }
    io.write_record(paths["selection"], {"experiments": names or list(params.experiments)})
    for name, exp in params.experiments.items():
        for part, content in (("train", exp.train), ("evaluate", exp.evaluate)):
            io.write_record(paths["configs"] / name / f"{part}.json", content)
        io.write_record(paths["configs"] / name / "report.json", {"name": name, **exp.meta})
        _write_run(paths["runs"] / name, name, exp, results[name])
    _write_data(paths["data"])
    return paths


def _write_run(run: Path, name: str, exp: config.Experiment, results: dict) -> None:
    epochs = exp.train["epochs"]
    saved = exp.checkpoint_epochs
    stopped = {}
    if "stopped_early" in results:  # as training writes a run that early stopping ended
        epochs = results["stopped_early"]
        saved = sorted({*(e for e in saved if e <= epochs), epochs})
        stopped = {"stopped_early": {"epoch": epochs, "best_epoch": 1, "best_val_acc": 50.0}}
    io.write_record(
        run / "config.json",
        {
            "experiment": name,
            "settings": exp.train,
            "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
            "num_classes": len(CLASSES),
            "image_size": IMAGE_SIZE,
            "checkpoint_epochs": saved,
            "device": "cpu",
            "precision": "fp32",
            "code_version": "0.1.0+test",
            **stopped,
        },
    )
    history = ["epoch,lr,train_loss,train_acc,val_loss,val_acc,seconds,images_per_second"]
    for e in range(1, epochs + 1):
        train, val = results["train"][e - 1], results["val"][e - 1]
        history.append(f"{e},{0.01 / e},{2 - train},{train},{2 - val},{val},0.5,40.0")
    io.write_text(run / "history.csv", "\n".join(history) + "\n")

    steps_per_epoch, every = IMAGES // exp.train["batch_size"], exp.train["log_every"]
    steps = ["step,epoch,lr,loss,acc"]
    for step in range(every, steps_per_epoch * epochs + 1, every):
        epoch = (step - 1) // steps_per_epoch + 1
        steps.append(f"{step},{epoch},0.01,1.5,{results['train'][epoch - 1] - 0.05}")
    io.write_text(run / "steps.csv", "\n".join(steps) + "\n")
    # What training writes beside its checkpoints, vouched for by their manifest.
    beside = {f: manifest.file_digest(run / f) for f in ("history.csv", "steps.csv")}
    with manifest.folder(run / "checkpoints", beside=beside):
        pass

    with manifest.folder(run / "eval") as tmp:
        for e in saved:
            io.write_json(tmp / f"epoch_{e:03d}.json", _evaluation(name, e, exp, results))
            kinds = {"val_plain": "val", "test_plain": "test"}
            if results["tta"]:
                kinds["test_tta"] = "tta"
            arrays = {
                kind: _predicted(name, split, e, {name: results}) for kind, split in kinds.items()
            }
            io.write_bytes(tmp / f"epoch_{e:03d}.npz", predictions.to_bytes(arrays))


def _evaluation(name: str, epoch: int, exp: config.Experiment, results: dict) -> dict:
    test = results["test"][epoch - 1]
    tta = results["tta"][epoch - 1] if results["tta"] else None
    return {
        "experiment": name,
        "epoch": epoch,
        "checkpoint": f"runs/{name}/checkpoints/epoch_{epoch:03d}.pt",
        "val": {"loss": 1.0, "acc": results["val"][epoch - 1]},
        "test": {"loss": 1.1, "acc": test},
        "tta": None if tta is None else {**exp.evaluate, "vote_acc": tta, "mean_acc": tta - 0.01},
        "per_class": [
            {
                "index": i,
                "id": f"n{i:08d}",
                "name": label,
                "count": TEST // len(CLASSES),
                "test_acc": test * (i + 1) / len(CLASSES),
                "tta_acc": None if tta is None else tta * (i + 1) / len(CLASSES),
            }
            for i, label in enumerate(CLASSES)
        ],
        "images": {"val": VAL, "test": TEST},
    }


def _write_data(data: Path) -> None:
    rng = np.random.default_rng(0)
    with manifest.folder(data) as tmp:
        np.save(
            tmp / "train_x.npy",
            rng.integers(0, 256, (IMAGES, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
        )
        for split in ("val", "test"):
            np.save(tmp / f"{split}_y.npy", labels(split))
        io.write_json(
            tmp / "classes.json",
            [{"index": i, "id": f"n{i:08d}", "name": label} for i, label in enumerate(CLASSES)],
        )


def md_ladder(report: Path, table: int = 0) -> pd.DataFrame:
    """report.md's ladder table (table=1: the test-picked one), as text cells under its
    headers."""
    lines = (report / "report.md").read_text(encoding="utf-8").splitlines()
    start = [i for i, line in enumerate(lines) if line.startswith("| # |")][table]
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return pd.DataFrame(rows[2:], columns=rows[0])
