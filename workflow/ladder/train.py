"""`ladder train`: train one experiment, with per-epoch checkpoints and exact resume.

Outputs (results/experiments/<exp>/): config.json, history.csv, steps.csv, checkpoints/epoch_NNN.pt.
They are written when training ends. Until then everything lives in a resume folder outside the
declared outputs (results/resume/<exp>/<fingerprint>/), because both engines delete the outputs
of an interrupted job before rerunning it. The fingerprint covers the settings, the input data
and the code, so a changed experiment never resumes from a stale state.

Randomness is re-seeded from (seed, epoch) at the start of every epoch: shuffling, augmentation,
dropout and ShakeDrop draw the same numbers whether or not the run was interrupted before, so a
resumed run ends with the same weights as an uninterrupted one (on the CPU; GPU kernels are not
bitwise deterministic).
"""

from __future__ import annotations

import csv
import hashlib
import io as stdio
import logging
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ladder import augment, code, config, devices, io, models, optim
from ladder.inference import autocast, predict
from ladder.loader import DeviceSplit

log = logging.getLogger(__name__)

HISTORY_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "seconds",
    "images_per_second",
]
STEPS_COLUMNS = ["step", "epoch", "lr", "loss", "acc"]


class NonFiniteLossError(FloatingPointError):
    pass


# ----------------------------------------------------------------------------------------------
# Identity of a run: what its results depend on


def file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()[:16]


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**63


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the global RNG other libraries draw from)
    torch.manual_seed(seed)  # the CPU and every CUDA device


# ----------------------------------------------------------------------------------------------
# Resume state


@dataclass
class Progress:
    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)


def _save_state(path: Path, model, ema, opt, schedule, progress: Progress) -> None:
    state = {
        "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": opt.state_dict(),
        "schedule": schedule.state_dict(),
        "progress": progress.__dict__,
    }
    with io.atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_state(path: Path, model, ema, opt, schedule, device) -> Progress:
    state = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    return Progress(**state["progress"])


def save_checkpoint(model: nn.Module, path: Path) -> None:
    """A weights-only snapshot: a flat dict of CPU tensors, loadable with weights_only=True."""
    weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    # Through memory: torch.save names the archive inside the file after the path it writes to
    # (a temporary name here), and equal weights should give byte-identical files.
    buf = stdio.BytesIO()
    torch.save(weights, buf)
    io.write_bytes(path, buf.getvalue())


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = stdio.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Training


def train(
    name: str,
    settings: dict,
    data: str | Path,
    stats: str | Path,
    out: str | Path,
    resume_root: str | Path = "results/resume",
    device: str = "auto",
    compile_mode: str = "none",
    threads: int | None = None,
    progress: bool = True,
) -> Path:
    started = time.perf_counter()
    data, out, resume_root = Path(data), Path(out), Path(resume_root)
    dev = torch.device(devices.resolve(device))
    if threads:
        torch.set_num_threads(threads)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True

    classes = io.read_json(data / "classes.json")
    train_split = DeviceSplit.load(data, "train", dev)
    val_split = DeviceSplit.load(data, "val", dev)
    image_size = int(train_split.x.shape[1])
    if len(train_split) < settings["batch_size"]:
        raise ValueError(
            f"batch_size {settings['batch_size']}: the train split has only "
            f"{len(train_split)} images"
        )

    identity = {
        "experiment": name,
        "settings": settings,
        "normalization": augment.normalization(settings["normalize"], io.read_json(stats)),
        "num_classes": len(classes),
        "image_size": image_size,
        "data": {
            p.name: file_digest(p)
            for p in [
                *(data / f"{s}.npy" for s in ("train_x", "train_y", "val_x", "val_y")),
                Path(stats),
            ]
        },
        "code_version": code.version("train"),
    }
    fp = config.fingerprint(identity)
    state_dir = resume_root / name / fp
    for stale in (resume_root / name).glob("*"):
        if stale.name != fp:  # settings, data or code changed: that state must not be resumed
            log.info("removing stale resume state %s", stale)
            shutil.rmtree(stale)

    # -- model, optimiser, schedule -----------------------------------------------------------
    seed_everything(settings["seed"])
    model = models.build(settings["model"], len(classes), image_size).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if settings["ema"]["decay"] > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(settings["ema"]["decay"]),
            use_buffers=True,
        )
    eval_model = ema.module if ema is not None else model
    opt = optim.optimizer(model.parameters(), settings["optimizer"], dev)
    steps_per_epoch = train_split.steps(settings["batch_size"], drop_last=True)
    schedule = optim.Schedule(opt, settings["schedule"], settings["epochs"], steps_per_epoch)
    forward = (
        torch.compile(model, mode=compile_mode)
        if compile_mode != "none" and dev.type == "cuda"
        else model
    )

    augmenter = augment.Augment(settings["augment"])
    norm = augment.Normalize(**identity["normalization"]).to(dev)
    criterion = nn.CrossEntropyLoss(label_smoothing=settings["label_smoothing"])

    state_path = state_dir / "state.pt"
    prog = Progress()
    if state_path.exists():
        prog = _load_state(state_path, model, ema, opt, schedule, dev)
        log.info("%s: resuming after epoch %d from %s", name, prog.epoch, state_dir)
    checkpoint_epochs = config.checkpoint_epochs(settings["epochs"], settings["checkpoint_every"])

    def val_transform(images: torch.Tensor) -> torch.Tensor:
        return norm(images.float().div_(255))

    for epoch in range(prog.epoch + 1, settings["epochs"] + 1):
        epoch_start = time.perf_counter()
        s = epoch_seed(settings["seed"], epoch)
        seed_everything(s)
        order = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(s))
        gen = torch.Generator(dev).manual_seed(s + 1)
        lr_at_start = optim.current_lr(opt)

        model.train()
        # Sums stay on the device and are read every log_every steps: no sync per step.
        zero = torch.zeros((), device=dev)
        win_loss, win_correct, win_n = zero.clone(), zero.clone(), 0
        ep_loss, ep_correct, ep_n = zero.clone(), zero.clone(), 0
        step_t, first_bad = zero.clone(), torch.full((), -1.0, device=dev)
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"{name} {epoch}/{settings['epochs']}",
            disable=None if progress else True,
            leave=False,
        )
        train_start = time.perf_counter()
        for i, (images, labels) in enumerate(
            train_split.batches(settings["batch_size"], order, drop_last=True), 1
        ):
            x = norm(augmenter(images, gen))
            with autocast(dev):
                logits = forward(x)
            loss = criterion(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.after_step()
            if ema is not None:
                ema.update_parameters(model)

            loss = loss.detach()
            correct = (logits.detach().argmax(1) == labels).sum()
            step_t += 1
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step_t, first_bad)
            win_loss += loss * len(labels)
            win_correct += correct
            win_n += len(labels)
            prog.step += 1
            if prog.step % settings["log_every"] == 0 or i == steps_per_epoch:
                _check_finite(first_bad, name, epoch, prog.step - i)
                ep_loss += win_loss
                ep_correct += win_correct
                ep_n += win_n
                if prog.step % settings["log_every"] == 0:
                    prog.steps.append(
                        {
                            "step": prog.step,
                            "epoch": epoch,
                            "lr": optim.current_lr(opt),
                            "loss": win_loss.item() / win_n,
                            "acc": win_correct.item() / win_n,
                        }
                    )
                rate = ep_n / (time.perf_counter() - train_start)
                bar.set_postfix(
                    loss=f"{ep_loss.item() / ep_n:.3f}",
                    acc=f"{ep_correct.item() / ep_n:.3f}",
                    img_s=f"{rate:.0f}",
                )
                bar.update(i - bar.n)
                win_loss, win_correct, win_n = zero.clone(), zero.clone(), 0
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        train_seconds = time.perf_counter() - train_start
        bar.close()

        val_logits = predict(eval_model, val_split, val_transform)
        val_loss = nn.functional.cross_entropy(val_logits, val_split.y.to(dev)).item()
        val_acc = (val_logits.argmax(1) == val_split.y.to(dev)).float().mean().item()
        schedule.after_epoch(val_acc)

        row = {
            "epoch": epoch,
            "lr": lr_at_start,
            "train_loss": ep_loss.item() / ep_n,
            "train_acc": ep_correct.item() / ep_n,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "seconds": round(time.perf_counter() - epoch_start, 3),
            "images_per_second": round(ep_n / train_seconds, 1),
        }
        prog.history.append(row)
        prog.epoch = epoch
        if epoch in checkpoint_epochs:
            save_checkpoint(eval_model, state_dir / "checkpoints" / f"epoch_{epoch:03d}.pt")
        _save_state(state_path, model, ema, opt, schedule, prog)
        io.write_text(
            state_dir / "history.csv", _csv(prog.history, HISTORY_COLUMNS)
        )  # to watch progress
        log.info(
            "%s epoch %d/%d lr %.4g train loss %.4f acc %.4f val loss %.4f acc %.4f "
            "%.1fs %.0f img/s",
            name,
            epoch,
            settings["epochs"],
            lr_at_start,
            row["train_loss"],
            row["train_acc"],
            val_loss,
            val_acc,
            row["seconds"],
            row["images_per_second"],
        )

    _finish(
        out,
        state_dir,
        identity,
        prog,
        checkpoint_epochs,
        dev,
        compile_mode,
        time.perf_counter() - started,
    )
    return out


def _check_finite(first_bad: torch.Tensor, name: str, epoch: int, step_offset: int) -> None:
    bad = int(first_bad.item())
    if bad >= 0:
        raise NonFiniteLossError(
            f"experiment {name}: the loss became NaN/inf at epoch {epoch}, "
            f"step {step_offset + bad} "
            "(lower optimizer.lr, or check the data and normalisation)"
        )


def _finish(out, state_dir, identity, prog, checkpoint_epochs, dev, compile_mode, seconds) -> None:
    """Write the declared outputs from the resume folder, then remove it."""
    with io.atomic_dir(out / "checkpoints") as tmp:
        for epoch in checkpoint_epochs:
            name = f"epoch_{epoch:03d}.pt"
            io.link_or_copy(state_dir / "checkpoints" / name, tmp / name)
    io.write_text(out / "history.csv", _csv(prog.history, HISTORY_COLUMNS))
    io.write_text(out / "steps.csv", _csv(prog.steps, STEPS_COLUMNS))
    io.write_json(
        out / "config.json",
        {
            **{k: v for k, v in identity.items() if k != "data"},
            "fingerprint": config.fingerprint(identity),
            "inputs": identity["data"],
            "checkpoint_epochs": checkpoint_epochs,
            "device": str(dev),
            "precision": "bf16-autocast" if dev.type == "cuda" else "fp32",
            "compile": compile_mode if dev.type == "cuda" else "none",
            "torch": torch.__version__,
            "seconds_last_session": round(seconds, 1),
        },
    )
    shutil.rmtree(state_dir)
    if not any(state_dir.parent.iterdir()):
        state_dir.parent.rmdir()
