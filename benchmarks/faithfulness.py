"""Faithfulness on the CPU: the seed's training code as written against `ladder train` +
`ladder evaluate`, for the same rung, on small real data, several seeds per side.

No GPU has been available to check that the pipeline reproduces the seed's numbers, so this
checks what a CPU can: that the two training paths give the same accuracy distribution.

The seed side, its code as written (in the style of benchmarks/train_throughput.py's baseline):
  PIL images in a Dataset -> torchvision v1 transforms (RandomHorizontalFlip, RandomApply(
  [RandomAffine(degrees=0, translate=...)]), ToTensor, Normalize) -> DataLoader(shuffle=True,
  drop_last=False: the default) -> the model -> CrossEntropyLoss -> torch.optim.SGD -> the
  schedule stepped once after every epoch (CosineAnnealingLR.step()), a val pass after each
  epoch; then the test accuracy (ToTensor + Normalize) and TTA: N passes of the training
  transforms over the test images, each pass's argmax, a majority vote per image (a bincount's
  argmax: a tie goes to the lowest class index; the seed's log does not say how it broke ties).
Our side: `ladder.train.train` and `ladder.evaluate.evaluate_run`, what the `train` and
  `evaluate` stages call (uint8 data, per-image augmentation of whole batches in ladder.augment,
  ladder.optim's SGD and schedule, the last partial batch of an epoch dropped; our TTA vote
  breaks a tie by the summed probabilities), on the CPU, and the per-image predictions it keeps.

"The same rung": one set of settings, resolved by ladder.config, drives both sides. The seed side
reads its hyper-parameters from them (SGD lr, momentum, nesterov, weight decay; the schedule;
batch size; epochs; flip probability, translation probability and range; normalisation; TTA
passes) and refuses settings it does not implement. Both sides build the model with
`ladder.models.build` after `torch.manual_seed(seed)`: mynet is the seed's own CNN (torchvision
has none), and for ResNet-18 the seed edited torchvision's model by hand as `build` does
(tests/test_models.py checks that). So replicate k starts from the same weights on both sides,
and the only difference is the path of the data, augmentation, training loop and evaluation.
The data are scikit-learn's 1,797 real 8x8 digit scans, split and resized by `ladder prepare`;
the seed side reads the prepared arrays as PIL images, which is what ImageFolder hands its
transforms.

The comparison, for each accuracy (val after the last epoch, test, test with TTA):
`ladder.report.significance.compare_to_parent` with the seed side as the parent and ours as the
child: Welch's t-test on the per-replicate accuracies, and its interval for ours - seed. "agree"
when the difference is within the replicate noise, else "differ". Beside it, a paired t-test
over replicates (pair k starts from the same weights, which makes it the more sensitive one).

What it cannot check:
- the GPU path: bf16 autocast, channels_last, fused SGD, torch.compile and nondeterministic
  kernels. Both sides run fp32 on the CPU here; the GPU path needs a GPU.
- the seed's scale (64x64, 200 classes, 80,000 images, 20-60 epochs): on small data, a
  difference is found only when it is larger than the replicate noise; the interval printed says
  how large a difference could still hide.
- DataLoader worker processes (num_workers=0 here: on 2 cores workers only cost start-up time;
  they change which random numbers an image gets, not their distribution).

    python benchmarks/faithfulness.py                              # mynet_translate, 8 seeds a side
    python benchmarks/faithfulness.py --rung resnet18_small --seeds 3   # ResNet-18, 3 epochs
    python benchmarks/faithfulness.py --variant seed_drop_last     # see VARIANTS

It reports and exits 0 (tests/test_faithfulness.py asserts, on the small rung).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ladder import augment, config, evaluate, io, models, predictions, train
from ladder.data import prepare, stats
from ladder.data.download import download
from ladder.report import significance
from PIL import Image
from scipy import stats as scipy_stats
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

say = functools.partial(print, flush=True)

# ----------------------------------------------------------------------------------------------
# The rungs: experiment settings as params.yaml writes them, resolved by ladder.config


@dataclass(frozen=True)
class Rung:
    description: str
    image_size: int  # default side the digits are resized to by `ladder prepare`
    epochs: int  # default
    settings: Callable[[int], dict]  # epochs -> the experiment (params.yaml's form)


def _rung11_recipe(epochs: int) -> dict:
    """Rung 11's training: SGD(lr=0.01, momentum=0.9, nesterov, weight_decay=1e-4) (the
    ladder's defaults), batch 32, flips, a translation of up to 1/8 of the side 60% of the
    time, cosine over the whole run, TTA x5."""
    return {
        "optimizer": {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1.0e-4},
        "batch_size": 32,
        "augment": {"hflip": 0.5, "translate": {"p": 0.6, "max": 0.125}},
        "schedule": {"name": "cosine", "t_max": epochs},
        "epochs": epochs,
        "tta": {"passes": 5},
    }


def _mynet_translate(epochs: int) -> dict:
    # Rung 2's model, the seed's small CNN with two conv blocks. (Rung 2's own SGD(lr=0.1,
    # momentum=0.9) sat at chance on the digits for about 30 steps, then jumped: after 3 epochs
    # its replicates were anywhere from 10 % to 67 %, a spread that would hide any difference.)
    return {**_rung11_recipe(epochs), "model": {"name": "mynet", "blocks": 2}}


def _mynet_small(epochs: int) -> dict:
    # The test's rung: a one-block mynet of width 8, which learns the digits in a few epochs at
    # lr 0.05 (tests/test_train.py's), in about a second per run.
    recipe = _rung11_recipe(epochs)
    return {
        **recipe,
        "model": {"name": "mynet", "blocks": 1, "width": 8},
        "optimizer": {**recipe["optimizer"], "lr": 0.05},
    }


def _resnet18_small(epochs: int) -> dict:
    # Rung 4: ResNet-18 without the max-pool, its first three stride-2 convs at stride 1;
    # SGD(lr=0.01, momentum=0.9, nesterov, weight_decay=1e-4), flips, batch 64, constant lr.
    return {
        "model": {"name": "resnet18", "unstride": 3, "maxpool": False},
        "optimizer": {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1.0e-4},
        "batch_size": 64,
        "augment": {"hflip": 0.5},
        "epochs": epochs,
        "tta": {"passes": 5},
    }


RUNGS = {
    "mynet_translate": Rung(
        "rung 2's mynet trained with rung 11's recipe: SGD(lr=0.01, momentum=0.9, nesterov, "
        "wd=1e-4), batch 32, flip + translate(p=0.6, 1/8), cosine T_max=epochs; TTA x5",
        16,
        15,
        _mynet_translate,
    ),
    "mynet_small": Rung(
        "the test's: mynet with one block of width 8, rung 11's recipe at lr=0.05; TTA x5",
        8,
        6,
        _mynet_small,
    ),
    "resnet18_small": Rung(
        "rung 4: small-image ResNet-18, SGD(lr=0.01, momentum=0.9, nesterov, wd=1e-4), "
        "flip, batch 64, constant lr; TTA x5",
        8,
        3,
        _resnet18_small,
    ),
}


def resolve(rung: str, epochs: int, seed: int) -> tuple[dict, dict]:
    """(training settings, TTA settings) of `rung` with `seed`, resolved by ladder.config."""
    diff = {**RUNGS[rung].settings(epochs), "seed": seed, "checkpoint_every": epochs}
    exp = config.Params.from_dict({"experiments": {rung: diff}}).experiments[rung]
    return exp.train, exp.evaluate


# ----------------------------------------------------------------------------------------------
# Variants of one side: a diagnostic, and deliberately broken ones that show the comparison can
# tell (the test runs one)


@dataclass(frozen=True)
class Variant:
    side: str  # "seed" or "ours": the side it changes ("" for none)
    description: str
    change: Callable[[dict], dict]  # the side's settings -> what it runs instead


VARIANTS = {
    "none": Variant("", "both sides as written", lambda s: s),
    "seed_drop_last": Variant(
        "seed",
        "diagnostic: the seed's DataLoader drops the last partial batch, as ladder does",
        lambda s: {**s, "drop_last": True},
    ),
    "seed_no_augment": Variant(
        "seed",
        "broken: the seed side without flips and translations",
        lambda s: {**s, "augment": {**s["augment"], "hflip": 0.0, "translate": {"p": 0.0}}},
    ),
    "seed_schedule_per_batch": Variant(
        "seed",
        "broken: the seed side steps its per-epoch schedule after every batch",
        lambda s: {**s, "schedule_per_batch": True},
    ),
    "ours_lr_div10": Variant(
        "ours",
        "broken: our side with a 10x smaller learning rate",
        lambda s: {**s, "optimizer": {**s["optimizer"], "lr": s["optimizer"]["lr"] / 10}},
    ),
}


# ----------------------------------------------------------------------------------------------
# The data: the prepared digits, read by both sides

# 1,797 digits: 360 test (0.2), then 285 val (0.198 of the rest, rounded up) and 1,152 train =
# 36 x 32 = 18 x 64, whole batches, as the seed's 80,000 are. With 0.2 the train split is 1,149
# and the seed's DataLoader (drop_last=False) takes one partial batch more per epoch than ladder,
# which drops it: a real difference in the loop, too small to show in the accuracies here
# (`--val-fraction 0.2` agrees too: BENCHMARKS.md).
VAL_FRACTION = 0.198


def prepare_digits(root: Path, image_size: int, val_fraction: float = VAL_FRACTION) -> Path:
    """A results/data-like folder under `root`: prepared/ (the splits' .npy) and stats.json."""
    download({"source": "digits"}, root / "raw")
    settings = {
        "source": "digits",
        "val_fraction": val_fraction,
        "test_fraction": 0.2,
        "split_seed": 0,
        "image_size": image_size,
    }
    prepare.prepare(root / "raw", root / "prepared", settings, workers=1)
    stats.write(root / "prepared", root / "stats.json")
    return root


def load_split(data: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    folder = data / "prepared"
    return np.load(folder / f"{split}_x.npy"), np.load(folder / f"{split}_y.npy")


# ----------------------------------------------------------------------------------------------
# The seed side: its code as written


class PilImages(Dataset):
    """What ImageFolder hands its transform: one PIL RGB image per item."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        self.images = [Image.fromarray(image) for image in x]  # HxWx3 uint8: RGB
        self.y, self.transform = y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.y[i])


def seed_transforms(s: dict, norm: dict) -> tuple[T.Compose, T.Compose]:
    """(train, test) transforms, torchvision v1 on PIL images, from the settings."""
    a = s["augment"]  # resolved: the ops that are on, no others
    unsupported = sorted(set(a) - {"hflip", "translate"})
    if unsupported:
        raise ValueError(f"the seed side implements flip and translate, not {unsupported}")
    ops = []
    if "hflip" in a:
        ops.append(T.RandomHorizontalFlip(a["hflip"]))
    if "translate" in a:
        m = a["translate"]["max"]
        affine = T.RandomAffine(degrees=0, translate=(m, m))
        ops.append(T.RandomApply([affine], p=a["translate"]["p"]))
    tail = [T.ToTensor(), T.Normalize(norm["mean"], norm["std"])]
    return T.Compose(ops + tail), T.Compose(tail)


def seed_optimizer(model: nn.Module, s: dict):
    """(torch.optim.SGD, the scheduler or None for a constant rate), from the settings."""
    o, sch = s["optimizer"], s["schedule"]
    if o["name"] != "sgd" or s["ema"]["decay"] > 0 or sch.get("warmup_epochs", 0) > 0:
        raise ValueError("the seed side implements SGD without EMA or warm-up")
    opt = torch.optim.SGD(
        model.parameters(),
        lr=o["lr"],
        momentum=o["momentum"],
        nesterov=o["nesterov"],
        weight_decay=o["weight_decay"],
    )
    if sch["name"] == "cosine":
        return opt, lr_scheduler.CosineAnnealingLR(opt, T_max=sch["t_max"], eta_min=sch["eta_min"])
    if sch["name"] == "multistep":
        return opt, lr_scheduler.MultiStepLR(opt, milestones=sch["milestones"], gamma=sch["gamma"])
    if sch["name"] == "constant":
        return opt, None
    raise ValueError(f"the seed side has no {sch['name']!r} schedule")


@torch.no_grad()
def seed_predict(model: nn.Module, dataset: Dataset, batch: int = 500) -> np.ndarray:
    """Every image's argmax, in order, the model in eval mode."""
    model.eval()
    preds = [model(x).argmax(1) for x, _ in DataLoader(dataset, batch_size=batch)]
    model.train()
    return torch.cat(preds).numpy()


def seed_vote(preds: np.ndarray, classes: int) -> tuple[np.ndarray, int]:
    """(the majority vote per image, how many images had a tie): preds is (passes, images)."""
    counts = np.stack([np.bincount(p, minlength=classes) for p in preds.T])
    tied = (counts == counts.max(1, keepdims=True)).sum(1) > 1
    return counts.argmax(1), int(tied.sum())


def seed_run(s: dict, tta: dict, data: Path) -> dict:
    """Train and evaluate one replicate the seed's way: per-image correctness per metric."""
    norm = augment.normalization(s["normalize"], io.read_json(data / "stats.json"))
    train_tf, test_tf = seed_transforms(s, norm)
    (tx, ty), (vx, vy), (sx, sy) = (load_split(data, k) for k in ("train", "val", "test"))
    classes = len(io.read_json(data / "prepared" / "classes.json"))
    torch.manual_seed(s["seed"])
    model = models.build(s["model"], classes, tx.shape[1])
    opt, scheduler = seed_optimizer(model, s)
    criterion = nn.CrossEntropyLoss(label_smoothing=s["label_smoothing"])
    loader = DataLoader(
        PilImages(tx, ty, train_tf),
        batch_size=s["batch_size"],
        shuffle=True,
        drop_last=s.get("drop_last", False),  # the seed's: the default, False
    )
    val_set = PilImages(vx, vy, test_tf)
    per_batch = s.get("schedule_per_batch", False)  # (a broken variant)
    model.train()
    for _epoch in range(s["epochs"]):
        running_loss = 0.0
        for images, labels in loader:
            loss = criterion(model(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running_loss += loss.item()  # as written: the logged running loss, a sync a step
            if scheduler is not None and per_batch:
                scheduler.step()
        if scheduler is not None and not per_batch:
            scheduler.step()
        val_pred = seed_predict(model, val_set)
    result = {"val": val_pred == vy, "test": seed_predict(model, PilImages(sx, sy, test_tf)) == sy}
    if tta["passes"]:
        if tta["augment"] != "train":
            raise ValueError("the seed side's TTA passes use the training transforms")
        views = PilImages(sx, sy, train_tf)
        voted, ties = seed_vote(
            np.stack([seed_predict(model, views) for _ in range(tta["passes"])]), classes
        )
        result.update(tta=voted == sy, tta_ties=ties)
    return result


# ----------------------------------------------------------------------------------------------
# Our side: the functions `ladder train` and `ladder evaluate` call


def our_run(s: dict, tta: dict, data: Path, work: Path, threads: int) -> dict:
    """Train and evaluate one replicate with ladder: per-image correctness per metric."""
    name = f"seed{s['seed']}"
    runtime = train.Runtime(
        device="cpu",
        threads=threads,
        progress_bar=False,
        resume_root=work / "resume",
        failed_root=work / "failed",
    )
    prepared = data / "prepared"
    run = train.train(name, s, prepared, data / "stats.json", work / "runs" / name, runtime)
    (json_file,) = evaluate.evaluate_run(run, tta, prepared, work / "cache", "cpu", threads)
    result = io.read_json(json_file)
    lengths = predictions.expected(result["images"], tta=result["tta"] is not None)
    pred = predictions.read(json_file.with_suffix(predictions.SUFFIX), lengths)
    vy, sy = (np.load(prepared / f"{k}_y.npy") for k in ("val", "test"))
    correct = {"val": pred["val_plain"] == vy, "test": pred["test_plain"] == sy}
    if "test_tta" in pred:
        correct["tta"] = pred["test_tta"] == sy
    return correct


# ----------------------------------------------------------------------------------------------
# Replicates of each side


SIDE_NAMES = {"seed": "seed code", "ours": "ladder"}


@dataclass
class Side:
    name: str
    runs: list[dict] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def accuracies(self, metric: str) -> list[float]:
        return [float(r[metric].mean()) for r in self.runs]


@dataclass(frozen=True)
class Setup:
    """What every replicate of a comparison shares."""

    rung: str
    epochs: int
    data: Path
    work: Path  # scratch space for our side's runs
    threads: int = 1


def run_replicate(side: str, setup: Setup, seed: int, variant: str = "none") -> tuple[dict, float]:
    """(per-image correctness per metric, wall seconds) of one replicate of `side`."""
    s, tta = resolve(setup.rung, setup.epochs, seed)
    if VARIANTS[variant].side == side:
        s = VARIANTS[variant].change(s)
    start = time.perf_counter()
    with cpu_settings(setup.threads):
        if side == "seed":
            result = seed_run(s, tta, setup.data)
        else:
            result = our_run(s, tta, setup.data, setup.work / variant, setup.threads)
    return result, time.perf_counter() - start


def _add(side: Side, replicate: tuple[dict, float]) -> None:
    side.runs.append(replicate[0])
    side.seconds.append(replicate[1])


def replicates(side: str, setup: Setup, seeds: list[int], variant: str = "none") -> Side:
    """The replicates of one side, seed after seed."""
    out = Side(SIDE_NAMES[side])
    for seed in seeds:
        _add(out, run_replicate(side, setup, seed, variant))
    return out


def both_sides(setup: Setup, seeds: list[int], variant: str = "none") -> tuple[Side, Side]:
    """(seed side, our side), replicate k of each run one after the other (a machine that slows
    down mid-run slows both sides alike)."""
    seed_side, ours = Side(SIDE_NAMES["seed"]), Side(SIDE_NAMES["ours"])
    for seed in seeds:
        _add(seed_side, run_replicate("seed", setup, seed, variant))
        _add(ours, run_replicate("ours", setup, seed, variant))
    return seed_side, ours


@contextlib.contextmanager
def cpu_settings(threads: int) -> Iterator[None]:
    """`threads` torch threads for both sides, restored after. One by default: on 2 cores shared
    with other jobs, two OpenMP threads per process were 10-20x slower than one (50-95 ms a step
    of mynet at 8x8, batch 32, instead of 5); on an idle machine two are faster (18 ms a step
    of mynet at 16x16, batch 64, instead of 28). The thread count changed no accuracy here."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# The comparison

METRICS = {"val": "val (last epoch)", "test": "test", "tta": "test, TTA vote"}


def compare(
    seed_side: Side, ours: Side, confidence: float = significance.CONFIDENCE
) -> dict[str, significance.Comparison]:
    """metric -> compare_to_parent(child=ours, parent=the seed side)."""
    return {
        m: significance.compare_to_parent(
            [r[m] for r in ours.runs], [r[m] for r in seed_side.runs], confidence=confidence
        )
        for m in METRICS
        if all(m in r for r in ours.runs + seed_side.runs)
    }


def verdict(c: significance.Comparison) -> str:
    """'agree (p=..., Δ=... [low, high])' or 'differ (...)', in percentage points."""
    word = "agree" if c.within_noise else "differ"
    return (
        f"{word} (p={c.pvalue:.3g}, Δ={100 * c.delta:+.2f} pp "
        f"[{100 * c.low:+.2f}, {100 * c.high:+.2f}])"
    )


def paired_pvalue(ours: list[float], seed: list[float]) -> float | None:
    """Paired t-test over replicates (pair k shares its initial weights); None when the
    differences do not vary (a t-test has nothing to work with)."""
    if len(ours) < 2 or np.ptp(np.subtract(ours, seed)) == 0:
        return None
    return float(scipy_stats.ttest_rel(ours, seed).pvalue)


def report(seed_side: Side, ours: Side, comparisons: dict, confidence: float) -> str:
    """Print both distributions, the comparisons and the verdict; return the verdict."""
    for side in (seed_side, ours):
        each = ", ".join(f"{t:.1f}" for t in side.seconds)
        say(f"\n{side.name}: {len(side.runs)} replicates, {sum(side.seconds):.1f} s wall ({each})")
        for m in comparisons:
            acc = side.accuracies(m)
            summary = significance.replicate_summary(acc)
            values = " ".join(f"{100 * a:.2f}" for a in acc)
            stat = f"{100 * summary.mean:6.2f} ± {100 * summary.sd:4.2f} %"
            say(f"  {METRICS[m]:<17} {stat}  ({values})")
        ties = [r["tta_ties"] for r in side.runs if "tta_ties" in r]
        if ties:
            say(f"  test images with a tied TTA vote (lowest class wins): {ties}")
    say(f"\nours - seed code: Welch's t on per-replicate accuracy, {confidence:.0%} interval")
    for m, c in comparisons.items():
        p = paired_pvalue(ours.accuracies(m), seed_side.accuracies(m))
        paired = "n/a" if p is None else f"{p:.3g}"
        say(f"  {METRICS[m]:<17} {verdict(c)}; paired t (same initial weights) p={paired}")
    overall = "agree" if all(c.within_noise for c in comparisons.values()) else "differ"
    say(f"verdict: {overall}")
    return overall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rung", choices=RUNGS, default="mynet_translate")
    parser.add_argument("--seeds", type=int, default=8, help="replicates per side: seeds 0..K-1")
    parser.add_argument("--epochs", type=int, help="default: the rung's")
    parser.add_argument("--image-size", type=int, help="default: the rung's")
    parser.add_argument("--val-fraction", type=float, default=VAL_FRACTION)
    parser.add_argument("--variant", choices=VARIANTS, default="none")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--confidence", type=float, default=significance.CONFIDENCE)
    parser.add_argument("--work", help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    rung = RUNGS[args.rung]
    epochs, size = args.epochs or rung.epochs, args.image_size or rung.image_size
    say(f"{args.rung}: {rung.description}")
    say(f"variant {args.variant}: {VARIANTS[args.variant].description}")
    say(
        f"digits at {size}x{size}, {epochs} epochs, {args.seeds} seeds a side; "
        f"{platform.machine()}, {args.threads} torch thread(s), torch {torch.__version__}, "
        f"{dt.date.today()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        data = prepare_digits(work / "data", size, args.val_fraction)
        n = {k: len(load_split(data, k)[1]) for k in ("train", "val", "test")}
        say(f"images: {n['train']} train, {n['val']} val, {n['test']} test")
        setup = Setup(args.rung, epochs, data, work, args.threads)
        seed_side, ours = both_sides(setup, list(range(args.seeds)), args.variant)
    report(seed_side, ours, compare(seed_side, ours, args.confidence), args.confidence)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
