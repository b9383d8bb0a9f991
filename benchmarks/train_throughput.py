"""Training and TTA throughput: the seed's code as written against ladder's training path.

In one run, on one device, for EfficientNetV2-S (unstride 2) and the small-image ResNet-18 at
batch 32 and 256:
- baseline, the seed as written: JPEG bytes decoded by PIL in a Dataset, torchvision transforms
  on PIL images, a DataLoader with 4 workers, fp32, a loss.item() every step;
- ours: ladder.train.Learner.step, the code `ladder train` runs (uint8 data on the device,
  per-image augmentation there, bf16 autocast and channels_last on CUDA, fused SGD), eager and
  compiled (compile time reported separately);
- images/s, seconds per 80,000-image epoch, the speed-up, and the share of the GPU's dense
  bf16 peak (FLOPs counted with torch's FlopCounterMode);
- the aggregate images/s of 1, 2 and 4 concurrent training processes of the seed's rung;
- TTA: N augmented passes over the test images with EfficientNetV2-S.

    python benchmarks/train_throughput.py                  # the GPU run (< 5 min on an H100)
    python benchmarks/train_throughput.py --quick --device cpu   # tiny sizes (tests/ runs this)
"""

from __future__ import annotations

import argparse
import datetime as dt
import io as stdio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ladder import config, evaluate
from ladder.augment import Normalize
from ladder.loader import DeviceSplit
from ladder.train import Learner
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms as T

MODELS = {
    "efficientnet_v2_s": {"name": "efficientnet_v2_s", "unstride": 2, "dropout": 0.2},
    "resnet18_small": {"name": "resnet18", "unstride": 3, "maxpool": False},
}
# Rung 11's augmentations: flip, and a random translation 60% of the time.
AUGMENT = {"hflip": 0.5, "translate": {"p": 0.6, "max": 0.125}}
# Dense bf16 tensor-core peaks (FLOP/s) by device name, for the share-of-peak column.
PEAKS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}
EPOCH_IMAGES = 80_000


def settings(model: str, batch: int) -> dict:
    exp = {"model": MODELS[model], "augment": AUGMENT, "batch_size": batch, "epochs": 1}
    return config.Params.from_dict({"experiments": {"x": exp}}).experiments["x"].train


def synthetic(n: int, size: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, classes, n)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    x, y = synthetic(batch * (args.steps + args.warmup), args.image_size, args.classes)
    loader = DataLoader(
        JpegFolder(x, y, transform),
        batch_size=batch,
        shuffle=True,
        num_workers=args.loader_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    torch.manual_seed(0)
    from ladder import models

    model = models.build(settings(model_name, batch)["model"], args.classes, args.image_size).to(
        device
    )
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    criterion = nn.CrossEntropyLoss()
    model.train()
    running = 0.0
    for i, (images, labels) in enumerate(loader):
        if i == args.warmup:
            sync(device)
            start = time.perf_counter()
        images, labels = images.to(device), labels.to(device)
        loss = criterion(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        running += loss.item()  # the seed's running loss: a sync every step
    sync(device)
    return {"images_per_second": batch * args.steps / (time.perf_counter() - start)}


# ----------------------------------------------------------------------------------------------
# Ours: the Learner `ladder train` uses


def our_learner(model_name: str, batch: int, args, device, compile_mode: str):
    """The Learner `ladder train` builds, and an endless stream of batches already on the device."""
    x, y = synthetic(max(batch * 8, 512), args.image_size, args.classes)
    split = DeviceSplit(x, y, device)
    norm = {"mean": [0.5] * 3, "std": [0.5] * 3}
    s = settings(model_name, batch)
    learner = Learner.build(s, args.classes, args.image_size, 1000, norm, device, compile_mode)
    order = torch.arange(len(split)).repeat(10_000)
    return (
        learner,
        split.batches(batch, order, drop_last=True),
        torch.Generator(device).manual_seed(0),
    )


def ours(model_name, batch, args, device, compile_mode: str) -> dict:
    learner, batches, gen = our_learner(model_name, batch, args, device, compile_mode)
    first = time.perf_counter()
    learner.step(*next(batches), gen)  # compiles, when compiling
    sync(device)
    first = time.perf_counter() - first
    for _ in range(args.warmup):
        learner.step(*next(batches), gen)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        learner.step(*next(batches), gen)
    sync(device)
    seconds = time.perf_counter() - start
    return {"images_per_second": batch * args.steps / seconds, "first_step_seconds": first}


def flops_per_image(model_name, batch, args, device) -> float:
    """Forward + backward FLOPs of one image (matmul/conv FLOPs, as FlopCounterMode counts)."""
    from ladder import models

    model = models.build(settings(model_name, batch)["model"], args.classes, args.image_size).to(
        device
    )
    x = torch.randn(2, 3, args.image_size, args.image_size, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 2


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAKS.items() if key in name), None)


# ----------------------------------------------------------------------------------------------
# Concurrent jobs: separate processes, timed over the same window


def concurrent(jobs: int, args, model_name: str, batch: int) -> float:
    work = Path(args.work) / f"concurrent-{jobs}"
    work.mkdir(parents=True, exist_ok=True)
    for f in work.glob("*"):
        f.unlink()
    cmd = [sys.executable, __file__, "--worker", str(work), "--device", args.device]
    cmd += ["--image-size", str(args.image_size), "--classes", str(args.classes)]
    cmd += ["--warmup", str(args.warmup), "--duration", str(args.duration)]
    cmd += [
        "--worker-model",
        model_name,
        "--worker-batch",
        str(batch),
        "--compile",
        args.worker_compile,
    ]
    procs = [subprocess.Popen([*cmd, "--worker-id", str(i)]) for i in range(jobs)]
    while len(list(work.glob("ready-*"))) < jobs:
        if any(p.poll() not in (None, 0) for p in procs):
            raise RuntimeError(f"a benchmark worker failed ({work})")
        time.sleep(0.1)
    (work / "go").write_text(str(time.time() + 0.5))
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError(f"a benchmark worker failed ({work})")
    images = sum(json.loads(f.read_text())["images"] for f in work.glob("result-*"))
    return images / args.duration


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
    while not (work / "go").exists():
        time.sleep(0.01)
    go = float((work / "go").read_text())
    while time.time() < go:
        time.sleep(0.001)
    steps = 0
    while time.time() < go + args.duration:
        learner.step(*next(batches), gen)
        steps += 1
        if steps % 10 == 0:
            sync(device)
    sync(device)
    (work / f"result-{args.worker_id}").write_text(
        json.dumps({"images": steps * args.worker_batch})
    )


# ----------------------------------------------------------------------------------------------
# TTA


def tta_seconds(args, device) -> float:
    s = settings("efficientnet_v2_s", 32)
    from ladder import models

    model = models.build(s["model"], args.classes, args.image_size).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    x, y = synthetic(args.tta_images, args.image_size, args.classes)
    split = DeviceSplit(x, y, device)
    norm = Normalize([0.5] * 3, [0.5] * 3).to(device)
    views = evaluate.tta_views(s, {"augment": "train", "passes": args.tta_passes})
    evaluate.tta_predict(model, split, views[:1], norm, 0, args.classes)  # warm-up
    sync(device)
    start = time.perf_counter()
    evaluate.tta_predict(model, split, views, norm, 0, args.classes)
    sync(device)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
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
    p.add_argument("--work", default="/tmp/ladder-throughput")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks the script, measures nothing"
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-id", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-model", help=argparse.SUPPRESS)
    p.add_argument("--worker-batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.worker_compile = "none"  # concurrency: eager jobs, as scheduled by Snakemake today
    if args.worker:
        worker(args)
        return {}
    if args.quick:
        args.image_size, args.classes, args.steps, args.warmup = 16, 10, 2, 1
        args.batches, args.jobs, args.duration, args.loader_workers = "8", "1,2", 1.0, 2
        args.tta_images, args.tta_passes = 64, 2

    device = torch.device(args.device)
    compile_mode = args.compile if device.type == "cuda" else "none"
    peak = peak_flops(device, args.peak_tflops)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )
    when = dt.datetime.now().isoformat(timespec="minutes")
    print(f"{when}  {name}  torch {torch.__version__}  {os.cpu_count()} CPU cores")
    print(f"images {args.image_size}px, {args.classes} classes\n")

    models, batches = args.models.split(","), [int(b) for b in args.batches.split(",")]
    modes = ["none"] + ([compile_mode] if compile_mode != "none" else [])
    rows = []
    for model_name in models:
        for batch in batches:
            fpi = flops_per_image(model_name, batch, args, device)
            base = baseline(model_name, batch, args, device)["images_per_second"]
            label = f"seed as written (fp32, PIL, {args.loader_workers} workers)"
            measured = [(label, base, None)]
            for mode in modes:
                r = ours(model_name, batch, args, device, mode)
                label = "ours eager" if mode == "none" else f"ours compiled ({mode})"
                measured.append((label, r["images_per_second"], r["first_step_seconds"]))
            for label, ips, first in measured:
                rows.append(_row(model_name, batch, label, ips, base, fpi, peak, first))
                _print_row(rows[-1])

    # The seed's rung (EfficientNetV2-S at batch 32) as several jobs sharing the device.
    rung = "efficientnet_v2_s" if "efficientnet_v2_s" in models else models[0]
    rung_batch = 32 if 32 in batches else batches[0]
    base = next(
        r["images_per_second"]
        for r in rows
        if (r["model"], r["batch"]) == (rung, rung_batch) and r["path"].startswith("seed")
    )
    packed = {
        jobs: concurrent(jobs, args, rung, rung_batch) for jobs in map(int, args.jobs.split(","))
    }
    print(f"\nconcurrent eager jobs of {rung} at batch {rung_batch} on one device:")
    for jobs, ips in packed.items():
        print(
            f"  {jobs} job(s): {ips:8.0f} images/s in all ({ips / base:.1f}x the seed as written)"
        )

    tta = tta_seconds(args, device)
    what = f"{args.tta_passes} passes over {args.tta_images} images"
    print(f"\nTTA, efficientnet_v2_s, {what}: {tta:.1f} s")
    results = {"device": name, "rows": rows, "concurrent": packed, "tta_seconds": tta}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def _row(model, batch, path, ips, base, flops_per_image_, peak, first) -> dict:
    return {
        "model": model,
        "batch": batch,
        "path": path,
        "images_per_second": ips,
        "epoch_seconds": EPOCH_IMAGES / ips,
        "speedup": ips / base,
        "tflops": flops_per_image_ * ips / 1e12,
        "peak_share": flops_per_image_ * ips / peak if peak else None,
        "first_step_seconds": first,
    }


def _print_row(r: dict) -> None:
    share = f"{100 * r['peak_share']:5.1f}%" if r["peak_share"] is not None else "   n/a"
    first = f"{r['first_step_seconds']:6.1f}" if r["first_step_seconds"] is not None else "     -"
    print(
        f"{r['model']:<18}{r['batch']:>5}  {r['path']:<40}{r['images_per_second']:>9.0f} img/s"
        f"{r['epoch_seconds']:>8.1f} s/epoch{r['speedup']:>7.2f}x"
        f"{r['tflops']:>8.1f} TFLOP/s {share}  first step {first} s"
    )


if __name__ == "__main__":
    main()
