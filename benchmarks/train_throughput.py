"""Training and TTA throughput: the seed's code as written against ladder's training path.

In one run, on one device, for EfficientNetV2-S (unstride 2) and the small-image ResNet-18 at
batch 32 and 256:
- baseline, the seed as written: JPEG bytes decoded by PIL in a Dataset, torchvision transforms
  on PIL images, a DataLoader with 4 workers, fp32, a loss.item() every step;
- ours: ladder.train.Learner.step, the code `ladder train` runs (uint8 data on the device,
  per-image augmentation there, bf16 autocast and channels_last on CUDA, fused SGD), eager and
  compiled (compile time reported separately);
- images/s, seconds per 80,000-image epoch, the speed-up, and the share of the GPU's dense
  bf16 peak (FLOPs counted with torch's FlopCounterMode, corrected by ladder.flops: torch
  counts a grouped convolution's weight gradient as if it were dense);
- the aggregate images/s of 1, 2 and 4 concurrent training processes of the seed's rung;
- TTA: N augmented passes over the test images with EfficientNetV2-S;
- the training augmentations' cost per image on the device path (uint8 batch -> per-image ops ->
  Normalize -> batch mixing, no model), each op of the registry alone, rung 11's pipeline, mixup
  and CutMix, against the path with none, in microseconds per image.

The CPU and the GPU run the same code with the same loop lengths; only the device calls differ
(`sync`, `device_name`, channels_last, pinned memory, and the compile `Learner.build` does on
CUDA only). The compiled rows come last, after the eager rows, the concurrent jobs and TTA. A
measurement that fails is reported and the others still run (the exit status is then 1); the
JSON is rewritten after each section, so a run cut short keeps what it measured.

    python benchmarks/train_throughput.py --json results.json  # the GPU run: BENCHMARKS.md
    python benchmarks/train_throughput.py --quick --device cpu  # tiny sizes (tests/ runs this)
    python benchmarks/train_throughput.py --device cpu --sections augment --batches 256
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import io as stdio
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from ladder import augment, config, evaluate, flops, io, models
from ladder.augment import Normalize
from ladder.augment_registry import OPS
from ladder.loader import DeviceSplit
from ladder.train import Learner, build_mixer
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

MODELS = {
    "efficientnet_v2_s": {"name": "efficientnet_v2_s", "unstride": 2, "dropout": 0.2},
    "resnet18_small": {"name": "resnet18", "unstride": 3, "maxpool": False},
}
# Rung 11's augmentations: flip, and a random translation 60% of the time.
AUGMENT = {"hflip": 0.5, "translate": {"p": 0.6, "max": 0.125}}
# Dense bf16 tensor-core peaks (FLOP/s), by a part of the device's name; the first match wins.
PEAKS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}
EPOCH_IMAGES = 80_000
AUGMENT_ROUNDS = 3  # the augmentation rows, measured in turn this many times (fastest kept)
# The synthetic split of "ours" holds this many batches, so every measured run, short or long,
# crosses several epochs of it (the data is noise: only the number of steps matters).
SPLIT_BATCHES = 8
# --quick: tiny sizes, the real loop lengths (steps, warm-up, jobs, TTA passes, loader workers).
QUICK = {
    "image_size": 8,
    "classes": 10,
    "batches": "2",
    "duration": 1.0,
    "tta_images": 100,
}
# Concurrency: how long workers may take to start, and to finish beyond --duration, before the
# run gives up on them (generous: a loaded machine is slow, a hung one never ends).
WORKER_START_SECONDS = 600
WORKER_GRACE_SECONDS = 300

say = functools.partial(print, flush=True)  # a run cut short still shows what it measured


def settings(model: str, batch: int) -> dict:
    # A constant learning rate: the measured loop may run any number of steps, and a per-step
    # schedule (onecycle) refuses to step past the end it was built for.
    exp = {
        "model": MODELS[model],
        "augment": AUGMENT,
        "batch_size": batch,
        "epochs": 1,
        "schedule": {"name": "constant"},
    }
    return config.Params.from_dict({"experiments": {"x": exp}}).experiments["x"].train


def augmentations() -> dict[str, tuple[dict, dict]]:
    """The augmentation rows: name -> (`augment`, `mix` settings). Every op of the registry alone
    (always applied, its other settings the defaults), rung 11's pipeline, mixup, CutMix."""
    off = {"hflip": 0.0}
    rows = {"none": (off, {})}
    for op in OPS:
        rows[op.name] = ({**off, op.name: 1.0 if op.bare else {"p": 1.0}}, {})
    rows["rung 11 (flip, translate)"] = (AUGMENT, {})
    rows["mixup (alpha 0.2)"] = (off, {"mixup_alpha": 0.2})
    rows["cutmix (alpha 1)"] = (off, {"cutmix_alpha": 1.0})
    return rows


def synthetic(n: int, size: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, classes, n)


def build_model(model_name: str, args, device: torch.device) -> nn.Module:
    return models.build(settings(model_name, 32)["model"], args.classes, args.image_size).to(device)


# ----------------------------------------------------------------------------------------------
# The device-specific calls, kept thin: everything else is the same on the CPU and the GPU


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def peak_flops(name: str, override_tflops: float | None = None) -> float | None:
    """The dense bf16 peak (FLOP/s) of the device named `name`: the override, a known device's,
    or None (no share-of-peak column)."""
    if override_tflops:
        return override_tflops * 1e12
    return next((peak for key, peak in PEAKS.items() if key in name), None)


class Timer:
    """Seconds of device work between start() and stop(): a sync at both ends."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        sync(self.device)
        self.t0 = time.perf_counter()

    def stop(self) -> float:
        sync(self.device)
        return time.perf_counter() - self.t0


# ----------------------------------------------------------------------------------------------
# Baseline: the seed as written


class JpegFolder(Dataset):
    """What ImageFolder does per item: decode a JPEG with PIL, then the transforms."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        self.jpegs = []
        for image in x:
            buf = stdio.BytesIO()
            Image.fromarray(image).save(buf, format="JPEG", quality=90)
            self.jpegs.append(buf.getvalue())
        self.y, self.transform = y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        image = Image.open(stdio.BytesIO(self.jpegs[i])).convert("RGB")
        return self.transform(image), int(self.y[i])


def baseline(model_name, batch, args, device) -> dict:
    transform = T.Compose(
        [
            T.RandomHorizontalFlip(0.5),
            T.RandomApply([T.RandomAffine(degrees=0, translate=(0.125, 0.125))], p=0.6),
            T.ToTensor(),
            T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )
    # One epoch of exactly warm-up + measured batches: the seed's loop, workers started once.
    x, y = synthetic(batch * (args.warmup + args.steps), args.image_size, args.classes)
    loader = DataLoader(
        JpegFolder(x, y, transform),
        batch_size=batch,
        shuffle=True,
        num_workers=args.loader_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    torch.manual_seed(0)
    model = build_model(model_name, args, device)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    criterion = nn.CrossEntropyLoss()
    model.train()
    timer, running, steps = Timer(device), 0.0, 0
    for i, (images, labels) in enumerate(loader):
        if i == args.warmup:
            timer.start()
        images, labels = images.to(device), labels.to(device)
        loss = criterion(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        running += loss.item()  # the seed's running loss: a sync every step
        steps += i >= args.warmup
    seconds = timer.stop()
    if steps != args.steps:
        raise RuntimeError(f"the seed's loader gave {steps} measured batches, not {args.steps}")
    return {"images_per_second": batch * steps / seconds}


# ----------------------------------------------------------------------------------------------
# Ours: the Learner `ladder train` uses


def endless_batches(
    split: DeviceSplit, batch: int, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches for as many steps as asked: epoch after epoch of the split, each in a fresh random
    order with the last partial batch dropped, as `ladder train` does. The order is drawn where
    the images are: training copies a CPU permutation once per epoch, a sync it spreads over
    hundreds of steps, but this split is a few batches long."""
    if split.steps(batch, drop_last=True) == 0:
        raise ValueError(f"a split of {len(split)} images has no full batch of {batch}")
    gen = torch.Generator(split.x.device).manual_seed(seed)
    while True:
        order = torch.randperm(len(split), generator=gen, device=split.x.device)
        yield from split.batches(batch, order, drop_last=True)


def our_learner(model_name: str, batch: int, args, device, compile_mode: str):
    """The Learner `ladder train` builds, an endless stream of batches already on the device, and
    the augmentation's generator."""
    x, y = synthetic(batch * SPLIT_BATCHES, args.image_size, args.classes)
    split = DeviceSplit(x, y, device)
    norm = {"mean": [0.5] * 3, "std": [0.5] * 3}
    s = settings(model_name, batch)
    steps_per_epoch = EPOCH_IMAGES // batch
    learner = Learner.build(
        s, args.classes, args.image_size, steps_per_epoch, norm, device, compile_mode
    )
    return learner, endless_batches(split, batch), torch.Generator(device).manual_seed(0)


def ours(model_name, batch, args, device, compile_mode: str) -> dict:
    # A fresh compiler state for each Learner: otherwise compiling the same model again at
    # another batch size makes torch.compile guess a dynamic batch dimension.
    torch.compiler.reset()
    learner, batches, gen = our_learner(model_name, batch, args, device, compile_mode)
    timer = Timer(device)
    timer.start()
    learner.step(*next(batches), gen)  # compiles, when compiling
    first = timer.stop()
    for _ in range(args.warmup):
        learner.step(*next(batches), gen)
    timer.start()
    for _ in range(args.steps):
        learner.step(*next(batches), gen)
    seconds = timer.stop()
    return {"images_per_second": batch * args.steps / seconds, "first_step_seconds": first}


def augment_seconds(name: str, batch: int, args, device) -> float:
    """Seconds per image of an augmentation row's device path: the ops `ladder train` runs on
    a uint8 batch, Normalize and batch mixing, as Learner.step does before the model."""
    aug, mix = augmentations()[name]
    exp = {"augment": aug, "mix": mix}
    s = config.Params.from_dict({"experiments": {"x": exp}}).experiments["x"].train
    augmenter, mixer = augment.Augment(s["augment"]), build_mixer(s["mix"], args.classes)
    norm = Normalize([0.5] * 3, [0.5] * 3).to(device)
    x, y = synthetic(batch * SPLIT_BATCHES, args.image_size, args.classes)
    batches = endless_batches(DeviceSplit(x, y, device), batch)
    gen = torch.Generator(device).manual_seed(0)

    def step(i: int) -> None:
        images, labels = next(batches)
        out = norm(augmenter(images, gen))
        if mixer is not None:
            mixer(out, labels, mixer.draw(0, i, *images.shape[-2:]))

    for i in range(args.warmup):
        step(i)
    timer = Timer(device)
    timer.start()
    for i in range(args.steps):
        step(i)
    return timer.stop() / (args.steps * batch)


def flops_per_image(model_name, args, device) -> float:
    """Forward + backward FLOPs of one image (matmul/conv FLOPs, as ladder.flops counts them)."""
    model = build_model(model_name, args, device)
    x = torch.randn(2, 3, args.image_size, args.image_size, device=device)
    with flops.counter() as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 2


# ----------------------------------------------------------------------------------------------
# Concurrent jobs: separate processes, timed over the same window


def concurrent(jobs: int, args, model_name: str, batch: int) -> float:
    """Aggregate images/s of `jobs` training processes started together on the device."""
    work = Path(args.work) / f"concurrent-{jobs}"
    work.mkdir(parents=True, exist_ok=True)
    for f in work.glob("*"):
        f.unlink()
    cmd = [sys.executable, __file__, "--worker", str(work), "--device", args.device]
    cmd += ["--image-size", str(args.image_size), "--classes", str(args.classes)]
    cmd += ["--warmup", str(args.warmup), "--duration", str(args.duration)]
    cmd += ["--worker-model", model_name, "--worker-batch", str(batch)]
    cmd += ["--compile", args.worker_compile]
    procs = [subprocess.Popen([*cmd, "--worker-id", str(i)]) for i in range(jobs)]
    try:
        deadline = time.monotonic() + WORKER_START_SECONDS
        while len(list(work.glob("ready-*"))) < jobs:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a benchmark worker ended before it was ready ({work})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not ready after {WORKER_START_SECONDS} s ({work})")
            time.sleep(0.1)
        io.write_text(work / "go", str(time.time() + 0.5))  # atomic: never read half-written
        for p in procs:
            if p.wait(timeout=args.duration + WORKER_GRACE_SECONDS) != 0:
                raise RuntimeError(f"a benchmark worker failed ({work})")
    finally:
        for p in procs:  # left running only after a failure
            if p.poll() is None:
                p.kill()
                p.wait()
    results = [json.loads(f.read_text()) for f in sorted(work.glob("result-*"))]
    return sum(r["images"] / r["seconds"] for r in results)


def worker(args) -> None:
    device = torch.device(args.device)
    work = Path(args.worker)
    learner, batches, gen = our_learner(
        args.worker_model, args.worker_batch, args, device, args.compile
    )
    for _ in range(args.warmup + 1):
        learner.step(*next(batches), gen)
    sync(device)
    (work / f"ready-{args.worker_id}").write_text("")
    deadline = time.monotonic() + WORKER_START_SECONDS
    while not (work / "go").exists():
        if time.monotonic() > deadline:  # the parent is gone
            raise TimeoutError(f"no start signal after {WORKER_START_SECONDS} s ({work})")
        time.sleep(0.01)
    go = float((work / "go").read_text())
    while time.time() < go:
        time.sleep(0.001)
    start, steps = time.perf_counter(), 0
    while time.time() < go + args.duration:
        learner.step(*next(batches), gen)
        steps += 1
        if steps % 10 == 0:  # at most 10 steps queued: the window measures work done in it
            sync(device)
    sync(device)
    result = {"images": steps * args.worker_batch, "seconds": time.perf_counter() - start}
    io.write_text(work / f"result-{args.worker_id}", json.dumps(result))


# ----------------------------------------------------------------------------------------------
# TTA


def tta_seconds(args, device) -> float:
    s = settings("efficientnet_v2_s", 32)
    model = build_model("efficientnet_v2_s", args, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # as `ladder evaluate` loads it
    x, y = synthetic(args.tta_images, args.image_size, args.classes)
    split = DeviceSplit(x, y, device)
    norm = Normalize([0.5] * 3, [0.5] * 3).to(device)
    views = evaluate.tta_views(s, {"augment": "train", "passes": args.tta_passes})
    evaluate.tta_predict(model, split, views[:1], norm, 0, args.classes)  # warm-up
    timer = Timer(device)
    timer.start()
    evaluate.tta_predict(model, split, views, norm, 0, args.classes)
    return timer.stop()


# ----------------------------------------------------------------------------------------------
# The run: sections in order of cost (compiling last), each measurement on its own


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batches", default="32,256")
    p.add_argument(
        "--compile", default="default", help="torch.compile mode for the compiled rows, or none"
    )
    p.add_argument("--jobs", default="1,2,4", help="concurrent training processes to measure")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each concurrency run")
    p.add_argument("--loader-workers", type=int, default=4)
    p.add_argument("--tta-images", type=int, default=10_000)
    p.add_argument("--tta-passes", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not known")
    p.add_argument("--sections", default=",".join(SECTIONS), help="what to measure, in this order")
    p.add_argument("--work", default="/tmp/ladder-throughput")
    p.add_argument("--json", type=Path, help="also write the results here (after each section)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes with the real loop lengths: checks every path, measures nothing",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-id", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-model", help=argparse.SUPPRESS)
    p.add_argument("--worker-batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.worker_compile = "none"  # concurrency: eager jobs, as scheduled by Snakemake today
    if args.quick:
        vars(args).update(QUICK)
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        p.error(f"--models: unknown {', '.join(sorted(unknown))}; known: {', '.join(MODELS)}")
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"--sections: unknown {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    if args.steps < 1 or args.warmup < 0 or args.duration <= 0:
        p.error("--steps must be >= 1, --warmup >= 0 and --duration > 0")
    return args


class Run:
    """The results so far, the failures, and the JSON file rewritten after each section."""

    def __init__(self, args, device: torch.device):
        self.args, self.device = args, device
        self.models = args.models.split(",")
        self.batches = [int(b) for b in args.batches.split(",")]
        self.failures: list[str] = []
        keep = ("models", "batches", "compile", "jobs", "image_size", "classes", "steps")
        keep += ("warmup", "duration", "loader_workers", "tta_images", "tta_passes", "quick")
        keep += ("sections",)
        self.results = {
            "complete": False,
            "date": dt.datetime.now().isoformat(timespec="minutes"),
            "device": device_name(device),
            "torch": torch.__version__,
            "cpu_cores": os.cpu_count(),
            "settings": {k: getattr(args, k) for k in keep},
            "rows": [],
            "concurrent": [],
            "tta_seconds": None,
            "augment": [],
            "failures": self.failures,
        }
        self.peak = peak_flops(self.results["device"], args.peak_tflops)
        self.flops: dict[str, float | None] = {}

    def attempt(self, what: str, fn, *fn_args):
        """fn(*fn_args), or None if it raised: one failed measurement (a compile error, an
        out-of-memory at batch 256) is reported and the run measures the rest."""
        try:
            return fn(*fn_args)
        except Exception as e:
            traceback.print_exc()
            self.failures.append(f"{what}: {type(e).__name__}: {e}")
            say(f"FAILED {what}: {type(e).__name__}: {e}")
            return None

    def save(self) -> None:
        if self.args.json:
            io.write_text(self.args.json, json.dumps(self.results, indent=2) + "\n")

    def seed_rate(self, model: str, batch: int) -> float | None:
        return next(
            (
                r["images_per_second"]
                for r in self.results["rows"]
                if (r["model"], r["batch"]) == (model, batch) and r["path"].startswith("seed")
            ),
            None,
        )

    def add_row(self, model, batch, path, ips, first) -> None:
        """One table row; the numbers a failed measurement could not give are None."""
        base = ips if path.startswith("seed") else self.seed_rate(model, batch)
        fpi = self.flops.get(model)
        flops = fpi * ips if fpi and ips else None
        row = {
            "model": model,
            "batch": batch,
            "path": path,
            "images_per_second": ips,
            "epoch_seconds": EPOCH_IMAGES / ips if ips else None,
            "speedup": ips / base if ips and base else None,
            "tflops": flops / 1e12 if flops else None,
            "peak_share": flops / self.peak if flops and self.peak else None,
            "first_step_seconds": first,
        }
        self.results["rows"].append(row)
        say(format_row(row))


def measure_eager(run: Run) -> None:
    """The seed as written and our eager step, for every model and batch size."""
    args, device = run.args, run.device
    for model in run.models:
        run.flops[model] = run.attempt(f"{model} FLOPs", flops_per_image, model, args, device)
        for batch in run.batches:
            what = f"{model} batch {batch}"
            r = run.attempt(f"{what} seed", baseline, model, batch, args, device)
            path = f"seed as written (fp32, PIL, {args.loader_workers} workers)"
            run.add_row(model, batch, path, r and r["images_per_second"], None)
            r = run.attempt(f"{what} eager", ours, model, batch, args, device, "none")
            ips, first = r and r["images_per_second"], r and r["first_step_seconds"]
            run.add_row(model, batch, "ours eager", ips, first)
            run.save()


def measure_concurrent(run: Run) -> None:
    """The seed's rung (EfficientNetV2-S at batch 32) as several jobs sharing the device."""
    args = run.args
    rung = "efficientnet_v2_s" if "efficientnet_v2_s" in run.models else run.models[0]
    rung_batch = 32 if 32 in run.batches else run.batches[0]
    base = run.seed_rate(rung, rung_batch)
    say(f"\nconcurrent eager jobs of {rung} at batch {rung_batch} on one device:")
    for jobs in map(int, args.jobs.split(",")):
        ips = run.attempt(f"{jobs} concurrent jobs", concurrent, jobs, args, rung, rung_batch)
        speedup = ips / base if ips and base else None
        run.results["concurrent"].append(
            {"jobs": jobs, "model": rung, "batch": rung_batch, "images_per_second": ips}
            | {"speedup": speedup}
        )
        if ips is not None:
            versus = f"{speedup:.1f}x the seed as written" if speedup else "no seed row"
            say(f"  {jobs} job(s): {ips:8.0f} images/s in all ({versus})")
        run.save()


def measure_tta(run: Run) -> None:
    args = run.args
    tta = run.attempt("TTA", tta_seconds, args, run.device)
    run.results["tta_seconds"] = tta
    if tta is not None:
        what = f"{args.tta_passes} passes over {args.tta_images} images"
        say(f"\nTTA, efficientnet_v2_s, {what}: {tta:.1f} s")
    run.save()


def measure_augment(run: Run) -> None:
    """Each augmentation's cost per image on the device path, at the largest batch: the rows in
    turn, AUGMENT_ROUNDS times over, the fastest of each kept (the first measurement of a process
    pays for warming up its allocator and threads, whichever row it is)."""
    batch = max(run.batches)
    say(f"\naugmentations on the device path, batch {batch} (microseconds per image):")
    names = list(augmentations())
    best: dict[str, float | None] = dict.fromkeys(names)
    for _ in range(AUGMENT_ROUNDS):
        for name in names:
            seconds = run.attempt(f"augmentation {name}", augment_seconds, name, batch,
                                  run.args, run.device)  # fmt: skip
            if seconds is not None:
                best[name] = min(seconds, best[name] or seconds)
    none = best["none"]
    for name, seconds in best.items():
        extra = seconds - none if seconds is not None and none is not None else None
        run.results["augment"].append(
            {"augmentation": name, "batch": batch, "us_per_image": seconds and 1e6 * seconds}
            | {"extra_us_per_image": extra if extra is None else 1e6 * extra}
        )
        if seconds is not None:
            versus = "" if extra is None or name == "none" else f"  ({1e6 * extra:+.2f} over none)"
            say(f"  {name:<28}{1e6 * seconds:9.2f} us/image{versus}")
    run.save()


def measure_compiled(run: Run) -> None:
    """Our step compiled, last: compiling takes most of the run's time, and a run cut short
    should lose only these rows (the largest batch first: the targets are set there).
    Learner.build compiles on CUDA only: no rows on the CPU."""
    mode = run.args.compile
    if run.device.type != "cuda" or mode == "none":
        say(f"\ncompiled ({mode}): not measured on {run.device.type} (CUDA only)")
        return
    say(f"\ncompiled ({mode}), first step = compile time:")
    for batch in sorted(run.batches, reverse=True):
        for model in run.models:
            what = f"{model} batch {batch} compiled ({mode})"
            r = run.attempt(what, ours, model, batch, run.args, run.device, mode)
            ips, first = r and r["images_per_second"], r and r["first_step_seconds"]
            run.add_row(model, batch, f"ours compiled ({mode})", ips, first)
            run.save()


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    run = Run(args, torch.device(args.device))
    run.save()  # an unwritable --json fails now, not after the measurements
    r = run.results
    say(f"{r['date']}  {r['device']}  torch {r['torch']}  {r['cpu_cores']} CPU cores")
    say(f"images {args.image_size}px, {args.classes} classes\n")
    for section in args.sections.split(","):
        SECTIONS[section](run)
    say("\nall rows:")
    for row in sorted(r["rows"], key=lambda row: (row["model"], row["batch"])):
        say(format_row(row))
    if run.failures:
        say(f"\n{len(run.failures)} measurement(s) failed:", *run.failures, sep="\n  ")
    r["complete"] = True
    run.save()
    return r


def format_row(r: dict) -> str:
    def num(value, spec: str, width: int) -> str:
        return format(value, spec) if value is not None else "-".rjust(width)

    share = f"{100 * r['peak_share']:5.1f}%" if r["peak_share"] is not None else "   n/a"
    return (
        f"{r['model']:<18}{r['batch']:>5}  {r['path']:<40}"
        f"{num(r['images_per_second'], '>9.0f', 9)} img/s"
        f"{num(r['epoch_seconds'], '>8.1f', 8)} s/epoch{num(r['speedup'], '>7.2f', 7)}x"
        f"{num(r['tflops'], '>8.1f', 8)} TFLOP/s {share}"
        f"  first step {num(r['first_step_seconds'], '6.1f', 6)} s"
    )


SECTIONS = {  # in order of cost: compiling last
    "eager": measure_eager,
    "concurrent": measure_concurrent,
    "tta": measure_tta,
    "augment": measure_augment,
    "compiled": measure_compiled,
}

if __name__ == "__main__":
    sys.exit(1 if main().get("failures") else 0)
