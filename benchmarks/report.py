"""Time `ladder report` on the whole ladder: params.yaml's experiments with their checkpoints (26
and 885 for the numbers in BENCHMARKS.md; 30 since the modern branch), 20,000 val and 10,000 test
images of 200 classes, every checkpoint evaluated with its per-image predictions
(eval/epoch_NNN.npz) as `ladder evaluate` writes them; with `--experiments 26 100 300 1000`,
ladders of that many experiments (the ladder repeated, each copy with a seed of its own) and the
growth exponent of CPU time and peak memory.

Builds the inputs once in a temporary folder (the files configure, train and evaluate would
write; synthetic numbers), then times `build_report` in a fresh process for each code tree: this
checkout's ("after") and, with --before, another one's, e.g. the report as committed:

    git worktree add /tmp/report-before HEAD
    python benchmarks/report.py --before /tmp/report-before/workflow
    python benchmarks/report.py --before /tmp/report-before/workflow \\
        --experiments 26 100 300 1000 --before-max 300

Each process imports its tree's `ladder` (PYTHONPATH), builds the report into its own folder and
prints the seconds of `build_report` alone (imports excluded; CPU time includes any process it
starts), the CPU time of the whole process (imports included) and its peak memory (the largest
resident set of the process or of any process it started). CPU seconds are the measure: on a
shared machine wall time depends on the load of others. The trees read
the same inputs: a report without predictions ignores the .npz files. `--shape` shrinks the data
(tests/test_report_benchmark.py runs the script that way).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np
from ladder import config, io, manifest, predictions

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Shape:
    """The data's sizes: Tiny ImageNet's by default (smaller ones test the script quickly)."""

    classes: int = 200
    val: int = 20_000
    test: int = 10_000
    train: int = 80_000
    size: int = 64  # pixels


# Run in the child: the timed call, then what the parent reads (one JSON line). CPU time counts
# the processes build_report starts (RUSAGE_CHILDREN); peak memory is the largest resident set
# of this process or of any of them (ru_maxrss: KiB on Linux).
CHILD = """
import json, resource, sys, time
from ladder.report import build_report
def cpu():
    own = time.process_time()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own + kids.ru_utime + kids.ru_stime
args = json.loads(sys.argv[1])
start, before = time.perf_counter(), cpu()
build_report(**args)
seconds, after = time.perf_counter() - start, cpu()
who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
peak = max(resource.getrusage(w).ru_maxrss for w in who)
print(json.dumps({"seconds": seconds, "cpu_seconds": after - before, "process_cpu_seconds": after,
                  "peak_mib": peak / 1024, "torch": "torch" in sys.modules}))
"""


def _curve(epochs: int, rng: np.random.Generator, top: float) -> np.ndarray:
    """Accuracy per epoch: rising to about `top`, with a little noise."""
    e = np.arange(1, epochs + 1)
    return np.clip(top * (1 - np.exp(-3 * e / epochs)) + rng.normal(0, 0.004, epochs), 0.01, 0.99)


def _correct(rng: np.random.Generator, accuracies: np.ndarray, n: int) -> list[np.ndarray]:
    """One run's per-image correctness at every checkpoint: each checkpoint's right images are
    the previous ones' with a few percent changed, at the accuracy of its epoch."""
    order = rng.permutation(n)  # the easiest images first
    wobble = rng.random(n) * 0.1
    out = []
    for acc in accuracies:
        score = np.empty(n)
        score[order] = np.linspace(0, 1, n)
        score += wobble * rng.random(n)
        out.append(score <= np.quantile(score, acc))
    return out


def _predicted(correct: np.ndarray, y: np.ndarray, rng: np.random.Generator, k: int) -> np.ndarray:
    """Class indices: the label where `correct`, another of the k classes at random where not
    (as incompressible as real predictions)."""
    return np.where(correct, y, (y + rng.integers(1, k, len(y))) % k)


def write_inputs(root: Path, params: config.Params, shape: Shape = Shape()) -> dict[str, str]:
    """Every input of build_report under `root`; its path arguments."""
    rng = np.random.default_rng(0)
    paths = {
        "selection": root / "configs" / "selection.json",
        "configs": root / "configs" / "experiments",
        "runs": root / "runs",
        "data": root / "data",
    }
    for rel, content in params.settings_files().items():
        io.write_record(root / "configs" / rel, content)
    y = {
        split: rng.permutation(np.arange(n) % shape.classes)
        for split, n in (("val", shape.val), ("test", shape.test))
    }
    with manifest.folder(paths["data"]) as tmp:
        # The report reads a handful of train images (memory-mapped): a sparse file of zeros
        # with one random image per row of the augmentation figure.
        train = np.lib.format.open_memmap(
            tmp / "train_x.npy", "w+", np.uint8, (shape.train, shape.size, shape.size, 3)
        )
        for i in np.linspace(0, shape.train - 1, 8).round().astype(int):
            train[i] = rng.integers(0, 256, (shape.size, shape.size, 3), dtype=np.uint8)
        train.flush()
        del train
        for split, labels in y.items():
            np.save(tmp / f"{split}_y.npy", labels)
        classes = [
            {"index": i, "id": f"n{i:08d}", "name": f"class {i}"} for i in range(shape.classes)
        ]
        io.write_json(tmp / "classes.json", classes)
    for k, (name, exp) in enumerate(params.experiments.items()):
        top = 0.2 + 0.3 * k / len(params.experiments)
        _write_run(paths["runs"] / name, name, exp, shape, y, rng, top)
    return {k: str(v) for k, v in paths.items()}


def _write_run(
    run: Path, name: str, exp, shape: Shape, y: dict, rng: np.random.Generator, top: float
) -> None:
    train, epochs = exp.train, exp.train["epochs"]
    io.write_record(
        run / "config.json",
        {
            "experiment": name,
            "settings": train,
            "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
            "num_classes": shape.classes,
            "image_size": shape.size,
            "checkpoint_epochs": exp.checkpoint_epochs,
            "device": "cuda",
            "precision": "bf16",
            "code_version": "0.1.0+bench",
        },
    )
    train_acc, val_acc = _curve(epochs, rng, top + 0.15), _curve(epochs, rng, top + 0.02)
    history = ["epoch,lr,train_loss,train_acc,val_loss,val_acc,seconds,images_per_second"]
    history += [
        f"{e},{0.01 / e},{2 - train_acc[e - 1]:.4f},{train_acc[e - 1]:.4f},"
        f"{2 - val_acc[e - 1]:.4f},{val_acc[e - 1]:.4f},300.0,270.0"
        for e in range(1, epochs + 1)
    ]
    io.write_text(run / "history.csv", "\n".join(history) + "\n")
    steps_per_epoch, every = shape.train // train["batch_size"], train["log_every"]
    steps = ["step,epoch,lr,loss,acc"]
    steps += [
        f"{s},{(s - 1) // steps_per_epoch + 1},0.01,1.5,{train_acc[(s - 1) // steps_per_epoch]:.4f}"
        for s in range(every, steps_per_epoch * epochs + 1, every)
    ]
    io.write_text(run / "steps.csv", "\n".join(steps) + "\n")
    # What training writes beside its checkpoints, vouched for by their manifest.
    beside = {f: manifest.file_digest(run / f) for f in ("history.csv", "steps.csv")}
    with manifest.folder(run / "checkpoints", beside=beside):
        pass

    tta = exp.evaluate["passes"] > 0 or exp.evaluate["augment"] == "flip"
    checkpoints = exp.checkpoint_epochs
    val_correct = _correct(rng, val_acc[np.array(checkpoints) - 1], shape.val)
    test_acc = np.clip(val_acc[np.array(checkpoints) - 1] - 0.03, 0.01, 0.99)
    test_correct = _correct(rng, test_acc, shape.test)
    tta_correct = _correct(rng, np.clip(test_acc + 0.01, 0, 0.99), shape.test) if tta else None
    with manifest.folder(run / "eval") as tmp:
        for i, epoch in enumerate(checkpoints):
            arrays = {
                "val_plain": _predicted(val_correct[i], y["val"], rng, shape.classes),
                "test_plain": _predicted(test_correct[i], y["test"], rng, shape.classes),
            }
            if tta:
                arrays["test_tta"] = _predicted(tta_correct[i], y["test"], rng, shape.classes)
            io.write_bytes(tmp / f"epoch_{epoch:03d}.npz", predictions.to_bytes(arrays))
            result = _evaluation(name, epoch, exp, shape, arrays, y)
            io.write_json(tmp / f"epoch_{epoch:03d}.json", result)


def _evaluation(name: str, epoch: int, exp, shape: Shape, arrays: dict, y: dict) -> dict:
    """epoch_NNN.json as evaluate writes it, its accuracies those of `arrays`."""
    acc = {k: float(np.mean(v == y[predictions.SPLITS[k]])) for k, v in arrays.items()}
    hits = arrays["test_plain"] == y["test"]
    k = shape.classes
    per_class = np.bincount(y["test"][hits], minlength=k) / np.bincount(y["test"], minlength=k)
    tta = None
    if "test_tta" in arrays:
        passes = 2 if exp.evaluate["augment"] == "flip" else exp.evaluate["passes"]
        vote = acc["test_tta"]
        tta = {**exp.evaluate, "passes": passes, "vote_acc": vote, "mean_acc": vote - 0.002}
    return {
        "experiment": name,
        "epoch": epoch,
        "checkpoint": f"results/experiments/{name}/checkpoints/epoch_{epoch:03d}.pt",
        "val": {"loss": 2.0, "acc": acc["val_plain"]},
        "test": {"loss": 2.1, "acc": acc["test_plain"]},
        "tta": tta,
        "per_class": [
            {
                "index": c,
                "id": f"n{c:08d}",
                "name": f"class {c}",
                "count": shape.test // k,
                "test_acc": float(per_class[c]),
                "tta_acc": None if tta is None else float(per_class[c]),
            }
            for c in range(k)
        ],
        "images": {"val": shape.val, "test": shape.test},
    }


def time_report(tree: Path, inputs: dict, out: Path) -> dict:
    """build_report of the `ladder` in `tree` (a folder holding the package), in a new process."""
    env = {**os.environ, "PYTHONPATH": str(tree), "MPLBACKEND": "Agg"}
    args = json.dumps({**inputs, "out": str(out)})
    done = subprocess.run(
        [sys.executable, "-c", CHILD, args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"report with {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def scaled(raw: dict, n: int) -> dict:
    """`raw` (params as read) with `n` experiments: its ladder, then copies of it, each copy's
    experiments renamed `<name>_c<k>`, their bases and replicates kept within the copy, and a
    seed of their own (+1000 k): a ladder rerun with other seeds, as a large sweep is. The last
    copy is cut short, parents before children."""
    ladder = raw["experiments"]
    order: list[str] = []  # parents first: a cut copy keeps every base it needs
    while len(order) < len(ladder):
        for name, exp in ladder.items():
            needs = [exp.get(k) for k in ("base", "replicate_of") if exp.get(k)]
            if name not in order and all(p in order for p in needs):
                order.append(name)
    experiments: dict[str, dict] = {}
    for k in range(-(-n // len(order))):
        for name in order[: n - len(experiments)]:
            exp = copy.deepcopy(ladder[name])
            if k:
                for key in ("base", "replicate_of"):
                    if exp.get(key):
                        exp[key] = f"{exp[key]}_c{k}"
                if "seed" in exp or not exp.get("base"):
                    exp["seed"] = exp.get("seed", 0) + 1000 * k
                name = f"{name}_c{k}"
            experiments[name] = exp
    return {**raw, "experiments": experiments, "run": []}


# The report's numbers: a faster report must give them byte for byte.
TABLES = ("ladder.csv", "checkpoints.csv", "curves.csv", "metrics.json", "report.md")


def _same_tables(before: Path, after: Path) -> str:
    """Which of TABLES the two reports hold byte for byte the same."""
    same = [t for t in TABLES if (before / t).read_bytes() == (after / t).read_bytes()]
    differ = [t for t in TABLES if t not in same]
    return f"same bytes: {', '.join(same) or 'none'}" + (
        f"; DIFFERENT: {', '.join(differ)}" if differ else ""
    )


def _exponent(counts: list[int], values: list[float]) -> float:
    """The slope of log(value) against log(count): 1 is linear growth, 0 none."""
    return float(np.polyfit(np.log(counts), np.log(values), 1)[0])


def kept_inputs(
    folder: Path, params: config.Params, shape: Shape, keep: bool
) -> tuple[dict[str, str], bool]:
    """write_inputs into `folder`, or, with `keep`, the inputs a run before left there for the
    same ladder and shape (at 1,000 experiments they take 6 minutes to build); whether built."""
    key = json.dumps({"params": params.raw, "shape": astuple(shape)}, sort_keys=True)
    stamp = folder / "inputs.json"  # written last: a folder without it is incomplete
    if keep and stamp.is_file() and stamp.read_text() == key:
        return json.loads((folder / "paths.json").read_text()), False
    shutil.rmtree(folder, ignore_errors=True)
    inputs = write_inputs(folder, params, shape)
    (folder / "paths.json").write_text(json.dumps(inputs))
    stamp.write_text(key)
    return inputs, True


def scaling(
    trees: dict[str, Path],
    raw: dict,
    counts: list[int],
    shape: Shape,
    root: Path,
    before_max: int,
    keep: bool = False,
) -> dict[str, dict[int, dict]]:
    """Each tree's report of each ladder size (the before tree up to `before_max` experiments),
    one size's inputs on disk at a time (all of them, kept for the next run, with `keep`); a
    line per run, then each tree's growth exponents."""
    results: dict[str, dict[int, dict]] = {label: {} for label in trees}
    for n in counts:
        params = config.Params.from_dict(scaled(raw, n), source=f"params.yaml x{n}")
        start = time.perf_counter()
        inputs, built = kept_inputs(root / f"inputs-{n}", params, shape, keep)
        checkpoints = sum(len(e.checkpoint_epochs) for e in params.experiments.values())
        how = f"built in {time.perf_counter() - start:.0f} s" if built else "kept from a run before"
        print(f"{n} experiments, {checkpoints} checkpoints (inputs {how}):", flush=True)
        for label, tree in trees.items():
            if label == "before" and n > before_max:
                print(f"{label:>8}: not run (--before-max {before_max})", flush=True)
                continue
            r = results[label][n] = time_report(tree, inputs, root / f"{label}-{n}")
            print(
                f"{label:>8}: build_report {r['cpu_seconds']:7.1f} CPU-s "
                f"({r['process_cpu_seconds']:.1f} with imports, {r['seconds']:.1f} s wall), "
                f"peak memory {r['peak_mib']:6.0f} MiB, torch imported: {r.get('torch', '?')}",
                flush=True,
            )
        if len(results) == 2 and all(n in by_count for by_count in results.values()):
            print(f"{'':>8}  {_same_tables(*(root / f'{label}-{n}' for label in trees))}")
        for label in trees:
            shutil.rmtree(root / f"{label}-{n}", ignore_errors=True)
        if not keep:
            shutil.rmtree(root / f"inputs-{n}")
    for label, by_count in results.items():
        ns = sorted(by_count)
        if len(ns) < 2:
            continue
        steps = ", ".join(
            f"{a}->{b}: "
            f"{_exponent([a, b], [by_count[a]['cpu_seconds'], by_count[b]['cpu_seconds']]):.2f}"
            for a, b in itertools.pairwise(ns)
        )
        cpu = _exponent(ns, [by_count[k]["cpu_seconds"] for k in ns])
        memory = _exponent(ns, [by_count[k]["peak_mib"] for k in ns])
        print(
            f"{label:>8}: growth exponent (log-log slope, {ns[0]}..{ns[-1]} experiments): "
            f"CPU {cpu:.2f} (per step {steps}), peak memory {memory:.2f}"
        )
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="another tree's workflow/ folder to time too")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per tree (best kept)")
    parser.add_argument(
        "--experiments",
        type=int,
        nargs="+",
        metavar="N",
        help="ladder sizes to time (the ladder repeated, see `scaled`), e.g. 26 100 300 1000",
    )
    parser.add_argument(
        "--before-max",
        type=int,
        default=None,
        metavar="N",
        help="time the --before tree only up to N experiments (the old report at 1000 needs "
        "more than 16 GB)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        help="with --experiments: build the inputs here and keep them; a later run with the "
        "same ladder and shape reuses them (3.6 GB at 1,000 experiments)",
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs=5,
        metavar=("CLASSES", "VAL", "TEST", "TRAIN", "SIZE"),
        default=list(astuple(Shape())),
        help="the data's sizes (default: Tiny ImageNet's)",
    )
    args = parser.parse_args(argv)
    params = config.load(args.params)
    trees = {"after": REPO / "workflow"}
    if args.before:
        trees = {"before": args.before, **trees}

    shape = Shape(*args.shape)
    if args.experiments:
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
        print(
            f"data: {shape.val:,} val / {shape.test:,} test images, {shape.classes} classes; "
            "CPU seconds of build_report (the processes it starts included)"
        )
        before_max = args.before_max or max(args.experiments)
        if args.work:
            args.work.mkdir(parents=True, exist_ok=True)
            return scaling(
                trees, params.raw, args.experiments, shape, args.work, before_max, keep=True
            )
        with tempfile.TemporaryDirectory(prefix="ladder-report-bench-") as tmp:
            return scaling(trees, params.raw, args.experiments, shape, Path(tmp), before_max)

    with tempfile.TemporaryDirectory(prefix="ladder-report-bench-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        inputs = write_inputs(root / "inputs", params, shape)
        built = time.perf_counter() - start
        checkpoints = sum(len(e.checkpoint_epochs) for e in params.experiments.values())
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
        print(
            f"inputs: {len(params.experiments)} experiments, {checkpoints} checkpoints, "
            f"{shape.val:,} val / {shape.test:,} test images, {shape.classes} classes "
            f"(built in {built:.0f} s)"
        )
        # Interleaved (before, after, before, ...), the fastest run of each kept: on a shared
        # machine, load that comes and goes then slows both alike.
        runs: dict[str, list[dict]] = {label: [] for label in trees}
        for i in range(args.repeat):
            for label, tree in trees.items():
                runs[label].append(time_report(tree, inputs, root / f"{label}-{i}"))
        results = {}
        for label, tree in trees.items():
            results[label] = best = min(runs[label], key=lambda r: r["seconds"])
            seconds = ", ".join(f"{r['seconds']:.1f}" for r in runs[label])
            print(
                f"{label:>6}: build_report {best['seconds']:.1f} s wall, "
                f"{best['cpu_seconds']:.1f} s CPU (wall of each run: {seconds}), "
                f"peak memory {best['peak_mib']:.0f} MiB  [{tree}]"
            )
        if "before" in results:
            before, after = results["before"], results["after"]
            extra = after["seconds"] - before["seconds"]
            extra_cpu = after["cpu_seconds"] - before["cpu_seconds"]
            print(
                f" added: {extra:+.1f} s wall ({100 * extra / before['seconds']:+.0f} %), "
                f"{extra_cpu:+.1f} s CPU ({100 * extra_cpu / before['cpu_seconds']:+.0f} %)"
            )
    return results


if __name__ == "__main__":
    main()
