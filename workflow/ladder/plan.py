"""`ladder plan`: what a params file will cost, before anything runs.

Per experiment, and in total: epochs, training images, the FLOPs of training (counted by
ladder.flops on the experiment's own model, image size and batch, times its steps), of the
validation after each epoch and of the evaluation stage (every checkpoint on val, test and each
TTA pass over test), the GPU time these take, and the disk its checkpoints fill.

The GPU time is FLOPs over a sustained rate, taken from the best source there is:
1. measured by a run of the same model (settings other than head dropout) at the same batch and
   image size: the median images/s of results/experiments/<exp>/history.csv (a finished run) or
   results/resume/<exp>/*/history.csv (a run in progress), this experiment's own first;
2. measured by benchmarks/train_throughput.py on a GPU (its --json output, kept as
   benchmarks/throughput.json, names the device): the images/s of the same model and batch, or the
   FLOP rate of the same model at the nearest batch measured;
3. ASSUMED_TFLOPS, printed and labelled as an assumption.
Images/s become FLOP/s through the counted FLOPs of a training step; validation and evaluation
are charged at the same rate (an estimate: inference in large batches usually runs faster).

Split sizes come from results/data/prepared when it was prepared with these dataset settings,
else from the source's known size and the split fractions (rounded as the split rounds them); a
`folder` source has no known size until it is prepared.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

from ladder import config, io, manifest, stages
from ladder.columns import aligned

THROUGHPUT = stages.REPO_ROOT / "benchmarks" / "throughput.json"
# The assumption when nothing was measured: the rate the seed's own epoch time implies.
# EfficientNetV2-S (unstride 2) at batch 32 counts 0.688 TFLOP per step (ladder.flops); the seed
# reported 2,500 steps in 5:22-6:50 per epoch on its GPU (fp32, PIL and a DataLoader): 1.72 PFLOP
# in ~366 s, 4.7 TFLOP/s. Ours should do better on a current GPU: measure it (BENCHMARKS.md).
ASSUMED_TFLOPS = 4.7
SEED_EPOCH = {"steps": 2500, "batch": 32, "seconds": (322 + 410) / 2}  # for tests/test_plan.py
# benchmarks/train_throughput.py's MODELS (tests/test_plan.py checks they agree).
BENCH_MODELS = {
    "efficientnet_v2_s": {"name": "efficientnet_v2_s", "unstride": 2, "dropout": 0.2},
    "resnet18_small": {"name": "resnet18", "unstride": 3, "maxpool": False},
}
BENCH_PATH = "ours eager"  # what `ladder train` runs unless LADDER_COMPILE says otherwise


@dataclass(frozen=True)
class KnownSource:
    pool: int  # labelled images that train and val (and test, without a test set) come from
    test: int | None  # images of the source's own test set; None: drawn from the pool
    classes: int


KNOWN_SOURCES = {
    # 500 train images of each of 200 classes; the official val split (50 per class) is the test
    "tinyimagenet": KnownSource(pool=100_000, test=10_000, classes=200),
    "digits": KnownSource(pool=1_797, test=None, classes=10),  # scikit-learn's bundled digits
}


# ----------------------------------------------------------------------------------------------
# The data


@dataclass(frozen=True)
class Splits:
    train: int | None
    val: int | None
    test: int | None
    classes: int | None
    image_size: int
    source: str  # where the numbers come from, for the reader


def held_out(n: int, fraction: float) -> int:
    """Images a split of `fraction` takes from `n`: scikit-learn's train_test_split (which
    prepare uses) rounds the held-out part up."""
    return math.ceil(fraction * n)


def splits(params: config.Params, root: Path) -> Splits:
    dataset = params.dataset
    prepared = root / stages.PREPARED
    note = ""
    if prepared.is_dir() and not config.prepared_is_current(params, root):
        note = f" ({prepared} was prepared with other dataset settings)"
    elif prepared.is_dir():
        try:
            return _prepared_splits(prepared)
        except (OSError, ValueError) as e:
            note = f" ({prepared} unreadable: {str(e).splitlines()[0]})"
    size = dataset["image_size"]
    known = KNOWN_SOURCES.get(dataset["source"])
    if known is None:
        return Splits(None, None, None, None, size, f"{dataset['source']}: unknown until prepared")
    pool, test = known.pool, known.test
    if test is None:
        test = held_out(pool, dataset["test_fraction"])
        pool -= test
    val = held_out(pool, dataset["val_fraction"])
    return Splits(
        pool - val, val, test, known.classes, size, f"{dataset['source']}: known size{note}"
    )


def _prepared_splits(prepared: Path) -> Splits:
    import numpy as np

    manifest.read(prepared)
    sizes = {s: len(np.load(prepared / f"{s}_y.npy", mmap_mode="r")) for s in ("train", "val")}
    test = len(np.load(prepared / "test_y.npy", mmap_mode="r"))
    image_size = int(np.load(prepared / "train_x.npy", mmap_mode="r").shape[1])
    classes = len(io.read_json(prepared / "classes.json"))
    return Splits(sizes["train"], sizes["val"], test, classes, image_size, str(prepared))


# ----------------------------------------------------------------------------------------------
# Rates


@dataclass(frozen=True)
class Rate:
    flops_per_second: float
    source: str
    measured: bool


def _key(model: dict, batch: int, image_size: int) -> str:
    """What throughput depends on: the model (head dropout aside), the batch, the image size."""
    shape = {k: v for k, v in model.items() if k != "dropout"}
    return json.dumps([shape, batch, image_size], sort_keys=True)


def _median_rate(history: Path) -> float | None:
    try:
        with history.open() as f:
            rates = [float(r["images_per_second"]) for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError):
        return None
    return statistics.median(rates) if rates else None


def measured_by_runs(params: config.Params, root: Path, image_size: int) -> dict[str, list]:
    """Throughput key -> [(experiment, images/s, label)] from finished and running runs."""
    found: dict[str, list] = {}
    for name, exp in params.experiments.items():
        run = root / stages.RUNS / name
        if (run / "config.json").exists() and (ips := _median_rate(run / "history.csv")):
            try:
                cfg = io.read_record(run / "config.json")
            except ValueError:  # damaged: no rate from it (ladder status says why)
                continue
            s = cfg["settings"]
            key = _key(s["model"], s["batch_size"], cfg["image_size"])
            found.setdefault(key, []).append((name, ips, f"run {name} on {cfg['device']}"))
        for history in sorted((root / stages.RESUME / name).glob("*/history.csv")):
            if ips := _median_rate(history):
                s = exp.train
                key = _key(s["model"], s["batch_size"], image_size)
                found.setdefault(key, []).append((name, ips, f"run {name} (in progress)"))
    return found


@dataclass(frozen=True)
class Bench:
    device: str
    date: str
    image_size: int
    classes: int
    rows: list[dict]  # model settings, batch, images/s


def load_bench(path: Path) -> tuple[Bench | None, str]:
    """The throughput table, or None with the reason."""
    if not path.exists():
        return None, f"{path.name}: none measured yet (see BENCHMARKS.md)"
    data = io.read_json(path)
    if data.get("settings", {}).get("quick"):
        return None, f"{path.name}: a --quick run (measures nothing), ignored"
    rows = []
    for row in data.get("rows", []):
        if (
            row.get("path") == BENCH_PATH
            and row.get("images_per_second")
            and (row["model"] in BENCH_MODELS)
        ):
            model = _resolved_model(BENCH_MODELS[row["model"]])
            rows.append({"model": model, "batch": row["batch"], "ips": row["images_per_second"]})
    settings = data["settings"]
    bench = Bench(data["device"], data["date"], settings["image_size"], settings["classes"], rows)
    return bench, f"{path.name}: {data['device']}, {data['date']}, {len(rows)} rows"


def _resolved_model(model: dict) -> dict:
    return (
        config.Params.from_dict({"experiments": {"x": {"model": model}}})
        .experiments["x"]
        .train["model"]
    )


def rate_for(
    model: dict,
    batch: int,
    splits_: Splits,
    step_flops: int,
    own: str,
    runs: dict[str, list],
    bench: Bench | None,
    assumed_tflops: float,
    costs: Costs,
) -> Rate:
    per_image = step_flops / batch
    measured = runs.get(_key(model, batch, splits_.image_size), [])
    if measured:
        _, ips, label = min(measured, key=lambda m: m[0] != own)  # its own run first
        return Rate(ips * per_image, label, True)
    if bench is not None and bench.image_size == splits_.image_size:
        shape = _key(model, 0, 0)
        same = [r for r in bench.rows if _key(r["model"], 0, 0) == shape]
        exact = [r for r in same if r["batch"] == batch]
        if exact:
            return Rate(exact[0]["ips"] * per_image, f"bench {bench.device}", True)
        if same:
            near = min(same, key=lambda r: abs(math.log(r["batch"] / batch)))
            cost = costs.get(near["model"], bench.classes, bench.image_size, near["batch"])
            rate = near["ips"] * cost.train_step / near["batch"]
            return Rate(rate, f"bench {bench.device} at batch {near['batch']}", True)
    return Rate(assumed_tflops * 1e12, "assumed", False)


# ----------------------------------------------------------------------------------------------
# Model costs, counted once

COSTS = f"{stages.CACHE}/model-costs.json"


class Costs:
    """Model costs (ladder.flops) counted before, kept by what they depend on: the model's
    settings but its dropout (which adds no FLOPs and no weights), its code (config.model_code),
    the classes, the image side and the batch. Counting one costs torch's import and a second or
    so per model; a plan that finds them all here imports no torch at all."""

    def __init__(self, path: Path):
        self.path, self.changed = path, False
        try:
            self.known = io.read_json(path)
        except (FileNotFoundError, ValueError):
            self.known = {}

    def get(self, model: dict, classes: int, image_size: int, batch: int):
        shape = {k: v for k, v in model.items() if k != "dropout"}
        key = json.dumps(
            [shape, config.model_code(model["name"]), classes, image_size, batch], sort_keys=True
        )
        if key not in self.known:
            from ladder import flops  # torch: only for what was never counted

            self.known[key] = asdict(flops.model_cost(model, classes, image_size, batch))
            self.changed = True
        return SimpleNamespace(**self.known[key])

    def save(self) -> None:
        if self.changed:
            io.write_json(self.path, self.known)


# ----------------------------------------------------------------------------------------------
# The plan


@dataclass
class ExperimentPlan:
    experiment: str
    model: str
    epochs: int
    batch: int
    train_images: int | None  # in the train split
    steps_per_epoch: int | None  # the last partial batch is dropped, as training does
    step_flops: int | None  # one training step, counted
    train_flops: int | None  # step_flops x steps_per_epoch x epochs
    val_flops: int | None  # validation after every epoch
    eval_flops: int | None  # the evaluate stage: checkpoints x (val + test + TTA passes x test)
    checkpoints: int
    checkpoint_bytes: int
    parameters: int
    tta_passes: int
    rate_flops_per_second: float | None
    rate_source: str
    gpu_seconds: float | None
    # Early stopping: the costs are at most these; a finished run of these settings says where
    # it stopped (the epoch), and which checkpoints it saved.
    early_stopping: bool = False
    stopped_at: int | None = None
    saved: list[int] | None = None


@dataclass
class Plan:
    params: str
    splits: Splits
    bench_note: str
    assumed_tflops: float
    experiments: list[ExperimentPlan] = field(default_factory=list)

    def total(self) -> dict:
        def add(key: str):
            values = [getattr(e, key) for e in self.experiments]
            return None if any(v is None for v in values) else sum(values)

        keys = ("epochs", "train_flops", "val_flops", "eval_flops", "checkpoints")
        return {
            **{k: add(k) for k in keys},
            "checkpoint_bytes": add("checkpoint_bytes"),
            "gpu_seconds": add("gpu_seconds"),
        }

    def as_dict(self) -> dict:
        return {
            "params": self.params,
            "splits": asdict(self.splits),
            "throughput": self.bench_note,
            "assumed_tflops": self.assumed_tflops,
            "experiments": [asdict(e) for e in self.experiments],
            "total": self.total(),
        }


def tta_passes(tta: dict) -> int:
    """Forward passes over the test split that TTA adds (ladder.evaluate.tta_views)."""
    return 2 if tta["augment"] == "flip" else tta["passes"]


def experiment_plan(
    exp: config.Experiment,
    splits_: Splits,
    runs: dict[str, list],
    bench: Bench | None,
    assumed_tflops: float,
    costs: Costs,
) -> ExperimentPlan:
    s = exp.train
    epochs, batch = s["epochs"], s["batch_size"]
    checkpoints = len(exp.checkpoint_epochs)
    passes = tta_passes(exp.evaluate)
    classes = splits_.classes or 2  # parameters and checkpoint size barely depend on it
    cost = costs.get(s["model"], classes, splits_.image_size, batch)
    row = ExperimentPlan(
        experiment=exp.name,
        model=s["model"]["name"],
        epochs=epochs,
        batch=batch,
        train_images=splits_.train,
        steps_per_epoch=None,
        step_flops=None,
        train_flops=None,
        val_flops=None,
        eval_flops=None,
        checkpoints=checkpoints,
        checkpoint_bytes=checkpoints * cost.checkpoint_bytes,
        parameters=cost.parameters,
        tta_passes=passes,
        rate_flops_per_second=None,
        rate_source="",
        gpu_seconds=None,
    )
    if None in (splits_.train, splits_.val, splits_.test, splits_.classes):
        row.rate_source = "unknown data size"
        return row
    row.steps_per_epoch = splits_.train // batch
    row.step_flops = cost.train_step
    row.train_flops = cost.train_step * row.steps_per_epoch * epochs
    row.val_flops = cost.forward_image * splits_.val * epochs
    row.eval_flops = cost.forward_image * checkpoints * (splits_.val + (1 + passes) * splits_.test)
    rate = rate_for(
        s["model"], batch, splits_, cost.train_step, exp.name, runs, bench, assumed_tflops, costs
    )
    row.rate_flops_per_second, row.rate_source = rate.flops_per_second, rate.source
    row.gpu_seconds = (row.train_flops + row.val_flops + row.eval_flops) / rate.flops_per_second
    return row


def stopped_early(root: Path, exp: config.Experiment) -> tuple[int | None, list[int] | None]:
    """(the epoch it stopped at, the epochs it saved) of a finished run of exactly these
    settings that stopped early; (None, None) when there is none."""
    try:
        cfg = io.read_record(root / stages.RUNS / exp.name / "config.json")
    except (OSError, ValueError):  # none, or damaged (ladder status says why)
        return None, None
    if cfg.get("settings") != exp.train or "stopped_early" not in cfg:
        return None, None
    return cfg["stopped_early"]["epoch"], cfg["checkpoint_epochs"]


def plan(
    params_file: str | Path,
    root: str | Path = ".",
    throughput: str | Path = THROUGHPUT,
    assumed_tflops: float = ASSUMED_TFLOPS,
    everything: bool = False,
) -> Plan:
    """The plan of `params_file`'s selected experiments (`run:`; all with `everything`), with
    the data, runs and throughput measured under `root` so far."""
    root = Path(root)
    params = config.load(params_file)
    splits_ = splits(params, root)
    bench, note = load_bench(Path(throughput))
    runs = measured_by_runs(params, root, splits_.image_size)
    names = list(params.experiments) if everything else list(params.selected)
    result = Plan(str(params_file), splits_, note, assumed_tflops)
    costs = Costs(root / COSTS)
    for name in names:
        exp = params.experiments[name]
        row = experiment_plan(exp, splits_, runs, bench, assumed_tflops, costs)
        if exp.train["early_stopping"]["patience"] > 0:
            row.early_stopping = True
            row.stopped_at, row.saved = stopped_early(root, exp)
        result.experiments.append(row)
    costs.save()
    return result


# ----------------------------------------------------------------------------------------------
# Text


def _num(value: float | None, unit: float = 1.0) -> str:
    """3 significant figures or so, without exponents; '?' when unknown."""
    if value is None:
        return "?"
    x = value / unit
    if 0 < x < 0.01:
        return f"{x:.1e}"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _int(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


HEADERS = [
    "experiment", "model", "epochs", "batch", "train img", "steps/ep", "train PFLOP",
    "val PFLOP", "eval PFLOP", "TTA", "ckpts", "ckpt GB", "GPU h", "rate (TFLOP/s)",
]  # fmt: skip


def _epochs(e: ExperimentPlan) -> str:
    """`40`; `<=40` with early stopping; `12/40` where a finished run stopped at 12."""
    if e.stopped_at is not None:
        return f"{e.stopped_at}/{e.epochs}"
    return f"<={e.epochs}" if e.early_stopping else str(e.epochs)


def format_plan(p: Plan) -> str:
    s = p.splits
    lines = [
        f"{p.params}: {len(p.experiments)} experiment(s)",
        f"data: {_int(s.train)} train / {_int(s.val)} val / {_int(s.test)} test images, "
        f"{_int(s.classes)} classes, {s.image_size}x{s.image_size} ({s.source})",
        f"throughput: {p.bench_note}",
        "",
    ]
    rows = []
    for e in p.experiments:
        rate = e.rate_flops_per_second
        rate_text = f"{_num(rate, 1e12)} {e.rate_source}" if rate else e.rate_source
        rows.append(
            [
                e.experiment, e.model, _epochs(e), str(e.batch), _int(e.train_images),
                _int(e.steps_per_epoch), _num(e.train_flops, 1e15), _num(e.val_flops, 1e15),
                _num(e.eval_flops, 1e15), str(e.tta_passes), str(e.checkpoints),
                _num(e.checkpoint_bytes, 1e9), _num(e.gpu_seconds, 3600), rate_text,
            ]
        )  # fmt: skip
    t = p.total()
    rows.append(
        [
            "total", "", _int(t["epochs"]), "", "", "", _num(t["train_flops"], 1e15),
            _num(t["val_flops"], 1e15), _num(t["eval_flops"], 1e15), "",
            _int(t["checkpoints"]), _num(t["checkpoint_bytes"], 1e9),
            _num(t["gpu_seconds"], 3600), "",
        ]
    )  # fmt: skip
    lines.append(aligned(HEADERS, rows, right=set(range(2, 13))))
    lines.append("")
    gpu_h, tb = t["gpu_seconds"], t["checkpoint_bytes"]
    lines.append(
        f"total: {_num(gpu_h, 3600)} GPU-hours, {_num(tb, 1e12)} TB of checkpoints "
        f"({_int(t['checkpoints'])} checkpoints)"
    )
    stopped = [e for e in p.experiments if e.stopped_at is not None]
    if any(e.early_stopping for e in p.experiments):
        lines.append(
            "early stopping: '<=' epochs, and the costs of those rows, are at most; 'n/N': a "
            "finished run of these settings stopped after epoch n (costs still for N)"
        )
    for e in stopped:
        lines.append(
            f"  {e.experiment}: stopped after epoch {e.stopped_at} of {e.epochs}; checkpoints "
            f"of epochs {', '.join(map(str, e.saved))}"
        )
    if any(e.rate_source == "assumed" for e in p.experiments):
        why = (
            "the rate the seed's reported epoch time implies; --tflops to change it"
            if p.assumed_tflops == ASSUMED_TFLOPS
            else f"--tflops; the seed's reported epoch time implies {ASSUMED_TFLOPS:g}"
        )
        lines.append(
            f"'assumed': nothing measured for that model and batch; {p.assumed_tflops:g} TFLOP/s "
            f"sustained is an ASSUMPTION ({why})"
        )
    lines.append(
        "FLOPs: counted per step with torch's FlopCounterMode (matmuls and convolutions, "
        "2 per multiply-add; ladder/flops.py)"
    )
    return "\n".join(lines)
