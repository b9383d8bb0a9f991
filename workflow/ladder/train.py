"""`ladder train`: train one experiment, with per-epoch checkpoints and exact resume.

Outputs (results/experiments/<exp>/): config.json, history.csv, steps.csv, checkpoints/epoch_NNN.pt
and the checkpoints' manifest. They are written when training ends. Until then everything lives
in a resume folder outside the declared outputs (results/resume/<exp>/<fingerprint>/), because
the engines delete the outputs of an interrupted job before rerunning it. The fingerprint covers
the settings, the input data and the code, so a changed experiment never resumes from a stale
state; a state that is unreadable or disagrees with its checkpoints is discarded, with a log
line, and training starts over. One run per experiment at a time (ladder.workspace).

Asked to stop (SIGTERM, SIGINT, SIGUSR1: ladder.stopping), a run finishes its optimiser step and
saves the state mid-epoch, with the RNG states and its place in the epoch; the rerun continues
from that step.

Randomness is re-seeded from (seed, epoch) at the start of every epoch: shuffling, augmentation,
dropout and ShakeDrop draw the same numbers whether or not the run was interrupted before, so a
resumed run ends with the same weights as an uninterrupted one (on the CPU; GPU kernels are not
bitwise deterministic).
"""

from __future__ import annotations

import contextlib
import csv
import io as stdio
import logging
import math
import pkgutil
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ladder import (
    augment,
    augment_registry,
    config,
    devices,
    io,
    manifest,
    models,
    optim,
    provenance,
    stages,
    stopping,
    workspace,
)
from ladder.inference import autocast, predict
from ladder.loader import DeviceSplit
from ladder.progress import Meter

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
TRAIN_INPUTS = ("train_x.npy", "train_y.npy", "val_x.npy", "val_y.npy")  # of the prepared data


class NonFiniteLossError(FloatingPointError):
    pass


# ----------------------------------------------------------------------------------------------
# Identity of a run: what its results depend on


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
    checkpoints: dict[str, str] = field(default_factory=dict)  # file name -> digest


def save_checkpoint(model: nn.Module, path: Path) -> str:
    """A weights-only snapshot: a flat dict of CPU tensors, loadable with weights_only=True.
    Returns the file's digest (ladder.manifest)."""
    weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return _torch_save(weights, path)


def _torch_save(obj, path: Path) -> str:
    """torch.save, atomically; returns the digest of what it wrote. Through memory: torch.save
    names the archive inside the file after the path it writes to (a temporary name here), and
    equal content should give equal files."""
    buf = stdio.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    io.write_bytes(path, data)
    return manifest.bytes_digest(data)


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = stdio.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# One optimiser step at a time


@dataclass
class Learner:
    """A model with its optimiser, schedule, EMA and transforms. `step` is the training path
    the benchmark measures too: augmentation on the device, bf16 autocast and channels_last on
    CUDA, a fused optimiser, optionally a compiled model; it never waits for the GPU."""

    model: nn.Module
    forward: nn.Module  # the model, compiled or not
    ema: torch.optim.swa_utils.AveragedModel | None
    opt: torch.optim.Optimizer
    schedule: optim.Schedule
    augmenter: augment.Augment
    mixer: object | None  # ladder.mixing.Mixer when the experiment mixes batches
    norm: augment.Normalize
    criterion: nn.Module
    device: torch.device
    clip_norm: float = 0.0  # the gradients' largest total L2 norm (0: not clipped)

    @classmethod
    def build(
        cls,
        settings: dict,
        num_classes: int,
        image_size: int,
        steps_per_epoch: int,
        normalization: dict,
        device: torch.device,
        compile_mode: str = "none",
    ) -> Learner:
        seed_everything(settings["seed"])  # the same initial weights on every device
        model = models.build(settings["model"], num_classes, image_size).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        ema = None
        if settings["ema"]["decay"] > 0:
            decay = settings["ema"]["decay"]
            ema = torch.optim.swa_utils.AveragedModel(
                model,
                multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay),
                use_buffers=True,
            )
        opt = optim.optimizer(model.parameters(), settings["optimizer"], device)
        compiled = compile_mode != "none" and device.type == "cuda"
        return cls(
            model=model,
            forward=torch.compile(model, mode=compile_mode) if compiled else model,
            ema=ema,
            opt=opt,
            schedule=optim.Schedule(opt, settings["schedule"], settings["epochs"], steps_per_epoch),
            augmenter=augment.Augment(settings["augment"]),
            mixer=build_mixer(settings["mix"], num_classes),
            norm=augment.Normalize(**normalization).to(device),
            criterion=nn.CrossEntropyLoss(label_smoothing=settings["label_smoothing"]),
            device=device,
            clip_norm=settings["grad_clip_norm"],
        )

    @property
    def eval_model(self) -> nn.Module:
        """What is validated and saved: the weight average when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def step(self, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, mix=None):
        """One optimiser step on a uint8 batch; (loss, correct count) stay on the device. `mix`:
        the batch's mixing (a ladder.mixing.Draw, from `self.mixer.draw`) when it mixes."""
        x = self.norm(self.augmenter(images, gen))
        targets = labels
        if self.mixer is not None:
            x, targets = self.mixer(x, labels, mix)
        with autocast(self.device):
            logits = self.forward(x)
        loss = self.criterion(logits.float(), targets)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_norm > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.opt.step()
        self.schedule.after_step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        # Under mixing: the class with the largest weight in the target (ladder.mixing).
        wanted = targets.argmax(1) if targets.ndim == 2 else labels
        return loss.detach(), (logits.detach().argmax(1) == wanted).sum()

    def validate(self, split: DeviceSplit) -> tuple[float, float]:
        logits = predict(self.eval_model, split, lambda im: self.norm(im.float().div_(255)))
        y = split.y.to(logits.device)
        loss = nn.functional.cross_entropy(logits, y).item()
        return loss, (logits.argmax(1) == y).float().mean().item()

    def save_state(self, path: Path, progress: Progress, partial: dict | None = None) -> None:
        """`partial`: where in an unfinished epoch the run stopped (`_train_epoch`), or None
        at the end of an epoch."""
        state = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.opt.state_dict(),
            "schedule": self.schedule.state_dict(),
            "progress": progress.__dict__,
            "partial": partial,
        }
        _torch_save(state, path)

    def load_state(self, state: dict) -> None:
        """Restore what `save_state` saved (read back by `_resume`)."""
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])


def build_mixer(mix: dict, num_classes: int):
    """Batch mixing, or None; imported only when used: its code is in the code record of the
    experiments that mix only (ladder.augment_registry)."""
    if not augment_registry.mixes(mix):
        return None
    return pkgutil.resolve_name(augment_registry.MIXER)(mix, num_classes)


# ----------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class Runtime:
    """How a run executes, as opposed to what it computes: changing these reruns nothing."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile_mode: str = "none"  # torch.compile mode on CUDA
    threads: int | None = None  # CPU threads for torch
    progress_bar: bool = True  # a tqdm bar when on a terminal
    progress_seconds: float = 30.0  # a progress log line at most this often during an epoch
    resume_root: Path = Path(stages.RESUME)  # resume state, one folder per experiment
    failed_root: Path = Path(stages.FAILED)  # what a diverged run leaves for its user


def train(
    name: str, settings: dict, data: str | Path, stats: str | Path, out: str | Path,
    runtime: Runtime = Runtime(), code: dict | None = None,
) -> Path:  # fmt: skip
    """Train experiment `name` into `out`, resuming from <resume_root>/<name>/ when possible.
    `code`: the experiment's code record (code.json: its model's and its augmentation ops' files
    by digest), part of what the weights depend on."""
    with workspace.experiment_lock(runtime.resume_root, name):
        identity = run_identity(name, settings, Path(data), Path(stats), code)
        return _train_locked(name, settings, identity, Path(data), Path(out), runtime)


def run_identity(
    name: str, settings: dict, data: Path, stats: Path, code: dict | None = None
) -> dict:
    """Everything the weights depend on; its fingerprint names the resume folder. The data enter
    through the digests prepare recorded in its manifest, each file checked against its digest
    before it is used, and stats.json against its own."""
    prepared = manifest.verify(data, (*TRAIN_INPUTS, "classes.json"))["files"]
    shape = np.load(data / "train_x.npy", mmap_mode="r").shape
    if len(shape) != 4:
        raise ValueError(f"{data / 'train_x.npy'}: expected N x H x W x 3 images, got {shape}")
    if shape[0] < settings["batch_size"]:
        raise ValueError(
            f"batch_size {settings['batch_size']}: the train split ({data}) has only "
            f"{shape[0]} images; lower batch_size in params.yaml"
        )
    return {
        "experiment": name,
        "settings": settings,
        "normalization": augment.normalization(
            settings["normalize"], provenance.read_record(stats)
        ),
        "num_classes": len(io.read_json(data / "classes.json")),
        "image_size": int(shape[1]),
        "data": {
            **{f: prepared[f]["digest"] for f in TRAIN_INPUTS},
            stats.name: manifest.file_digest(stats),
        },
        "code_version": stages.version("train"),
        "code": code,
    }


def _train_locked(
    name: str, settings: dict, identity: dict, data: Path, out: Path, runtime: Runtime
) -> Path:
    started = time.perf_counter()
    resume_root = Path(runtime.resume_root)
    state_dir = resume_root / name / config.fingerprint(identity)
    for stale in (resume_root / name).glob("*"):
        if stale != state_dir:  # settings, data or code changed: that state must not be resumed
            log.info("removing stale resume state %s", stale)
            shutil.rmtree(stale)
    done = _finished_run(name, state_dir)
    if done is not None:  # trained before with the same identity: the same result, again
        prog, run_info = done
        _finish(out, state_dir, identity, prog, saved_epochs(settings, prog.epoch), run_info)
        return out

    dev = torch.device(devices.resolve(runtime.device))
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_split = DeviceSplit.load(data, "train", dev)
    val_split = DeviceSplit.load(data, "val", dev)
    learner = Learner.build(
        settings,
        identity["num_classes"],
        identity["image_size"],
        train_split.steps(settings["batch_size"], drop_last=True),
        identity["normalization"],
        dev,
        runtime.compile_mode,
    )
    checkpoint_epochs = config.checkpoint_epochs(settings["epochs"], settings["checkpoint_every"])
    prog, partial = _resume(name, learner, state_dir)
    stopped = early_stop(prog.history, settings["early_stopping"])  # a state saved as it stopped
    meter = Meter(name, settings["epochs"], runtime.progress_seconds, prog.history)

    # Live curves, kept with the resume state (tensorboard --logdir results/ shows them while
    # the run trains) and handed over with the outputs; a resumed run drops what the killed
    # session logged after its last saved step.
    with (
        _session_log(state_dir / "train.log", replay=prog.step > 0),
        SummaryWriter(state_dir / "tensorboard", purge_step=prog.step + 1) as events,
    ):
        for epoch in range(prog.epoch + 1, settings["epochs"] + 1):
            if stopped:
                break
            epoch_start = time.perf_counter()
            try:
                row = _train_epoch(name, learner, train_split, settings, epoch, prog, runtime,
                                   meter, events, state_dir, partial)  # fmt: skip
            except NonFiniteLossError:
                _keep_failed(runtime.failed_root / name, state_dir, prog)
                raise
            partial = None
            row["val_loss"], row["val_acc"] = learner.validate(val_split)
            learner.schedule.after_epoch(row["val_acc"])
            row["seconds"] = round(time.perf_counter() - epoch_start, 3)
            meter.end_epoch(row["seconds"])
            prog.history.append({c: row[c] for c in HISTORY_COLUMNS})
            prog.epoch = epoch
            stopped = early_stop(prog.history, settings["early_stopping"])
            if epoch in checkpoint_epochs or stopped:  # the last epoch run is always saved
                file = checkpoint_name(epoch)
                digest = save_checkpoint(learner.eval_model, state_dir / "checkpoints" / file)
                prog.checkpoints[file] = digest
            learner.save_state(state_dir / "state.pt", prog)
            io.write_text(state_dir / "history.csv", _csv(prog.history, HISTORY_COLUMNS))
            # TensorBoard is for people: accuracies in percent there (fractions in the CSVs).
            events.add_scalar("epoch/val_acc", 100 * row["val_acc"], prog.step)
            for key in ("val_loss", "images_per_second"):
                events.add_scalar(f"epoch/{key}", row[key], prog.step)
            events.flush()
            log.info(
                "%s epoch %d/%d lr %.4g train loss %.4f acc %.2f%% val loss %.4f acc %.2f%% "
                "%.1fs %.0f img/s",
                name, epoch, settings["epochs"], row["lr"], row["train_loss"],
                100 * row["train_acc"], row["val_loss"], 100 * row["val_acc"], row["seconds"],
                row["images_per_second"],
            )  # fmt: skip

    # How it ran, as far as it shapes the weights; nothing that differs between two identical
    # runs (timings are in history.csv and the log), so evaluation reruns only for new weights.
    run_info = {
        "device": str(dev),
        "precision": "bf16-autocast" if dev.type == "cuda" else "fp32",
        "compile": runtime.compile_mode if dev.type == "cuda" else "none",
        "torch": torch.__version__,
    }
    if stopped and prog.epoch < settings["epochs"]:
        run_info["stopped_early"] = stopped
        log.info(
            "%s: stopped early after epoch %d of %d: val accuracy has not beaten its best "
            "(%.2f%%, epoch %d) by more than %g points for %d epochs", name, stopped["epoch"],
            settings["epochs"], stopped["best_val_acc"], stopped["best_epoch"],
            settings["early_stopping"]["min_delta"], settings["early_stopping"]["patience"],
        )  # fmt: skip
    log.info("%s: trained in %.1f s this session", name, time.perf_counter() - started)
    _finish(out, state_dir, identity, prog, saved_epochs(settings, prog.epoch), run_info)
    return out


# ----------------------------------------------------------------------------------------------
# Early stopping


def early_stop(history: list[dict], setting: dict) -> dict | None:
    """Whether training stops after the epochs in `history`: None to go on, else where it
    stopped and its best epoch. It stops once val accuracy (in %) has not beaten its best so far
    by more than `min_delta` for `patience` epochs in a row (Keras's rule: a smaller gain is no
    new best). A function of the history alone, so a resumed run decides as an uninterrupted
    one did."""
    patience = setting["patience"]
    if patience == 0 or not history:
        return None
    best, best_epoch = -math.inf, 0
    for row in history:
        if 100 * row["val_acc"] > best + setting["min_delta"]:
            best, best_epoch = 100 * row["val_acc"], row["epoch"]
    last = history[-1]["epoch"]
    if last - best_epoch < patience:
        return None
    return {"epoch": last, "best_epoch": best_epoch, "best_val_acc": round(best, 4)}


def saved_epochs(settings: dict, last: int) -> list[int]:
    """The checkpoints of a run that ended after epoch `last`: those of the schedule up to it,
    and `last` itself (the last epoch, or the one it stopped early at)."""
    every = config.checkpoint_epochs(settings["epochs"], settings["checkpoint_every"])
    return sorted({*(e for e in every if e <= last), last})


@contextlib.contextmanager
def _session_log(path: Path, replay: bool) -> Iterator[None]:
    """Log this session into the resume state too; a resumed run first repeats the earlier
    sessions' lines, which its job log no longer has (Snakemake deletes a job's log before it
    reruns the job)."""
    if replay and path.exists():
        log.info("earlier sessions of this run (%s):\n%s", path, path.read_text().rstrip())
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("ladder")
    logger.addHandler(handler)
    try:
        yield
    except stopping.Stopped as e:  # `ladder` logs it to the job log after this; here too
        handler.emit(log.makeRecord(log.name, logging.WARNING, __file__, 0, "%s", (e,), None))
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pt"


def _resume(name: str, learner: Learner, state_dir: Path) -> tuple[Progress, dict | None]:
    """The progress saved in `state_dir`, loaded into `learner`, and where in the next epoch
    it stopped (None: at its start). A fresh start when there is none, or when it cannot be
    trusted: an unreadable state.pt (a disk that filled up, a copy cut short), or checkpoints
    that are missing or differ from what the state recorded. Such a state is removed, with a
    log line that says why."""
    path = state_dir / "state.pt"
    if not path.exists():
        return Progress(), None
    try:
        state = torch.load(path, map_location=learner.device, weights_only=True)
        prog = Progress(**state["progress"])
        for file, digest in prog.checkpoints.items():
            checkpoint = state_dir / "checkpoints" / file
            if not checkpoint.is_file() or manifest.file_digest(checkpoint) != digest:
                raise ValueError(f"{checkpoint} is missing or differs from what {path} recorded")
    except Exception as e:  # anything wrong with it: start over rather than resume from it
        log.warning("%s: discarding resume state %s (%s); training from the start", name,
                    state_dir, str(e).splitlines()[0] if str(e) else type(e).__name__)  # fmt: skip
        shutil.rmtree(state_dir)
        return Progress(), None
    learner.load_state(state)
    partial = state.get("partial")
    if partial is None:
        log.info("%s: resuming after epoch %d from %s", name, prog.epoch, state_dir)
    else:
        log.info("%s: resuming at epoch %d, step %d from %s", name, partial["epoch"],
                 partial["step"], state_dir)  # fmt: skip
    return prog, partial


def _train_epoch(
    name: str,
    learner: Learner,
    split: DeviceSplit,
    settings: dict,
    epoch: int,
    prog: Progress,
    runtime: Runtime,
    meter: Meter,
    events: SummaryWriter,
    state_dir: Path,
    partial: dict | None = None,
) -> dict:
    """One pass over the train split, or its rest after `partial` (where a stopped run left
    it); appends to prog.steps; returns the epoch's history row so far. Loss and accuracy sums
    stay on the device and are read every log_every steps. Asked to stop, it saves the state
    before the next step and raises stopping.Stopped."""
    dev, batch, log_every = learner.device, settings["batch_size"], settings["log_every"]
    seed = epoch_seed(settings["seed"], epoch)
    seed_everything(seed)
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator(dev).manual_seed(seed + 1)
    steps = split.steps(batch, drop_last=True)
    row = {"epoch": epoch, "lr": optim.current_lr(learner.opt)}
    sums = _Sums.zero(dev)
    done = 0  # steps of this epoch before this session
    if partial is not None:
        done, row["lr"] = partial["step"], partial["lr"]
        sums = _Sums.load(partial["sums"], dev)
        _set_rng_state(partial["rng"], dev)
        gen.set_state(partial["gen"])

    disable = None if runtime.progress_bar else True  # None: a bar only on a terminal
    bar = tqdm(
        total=steps, initial=done, desc=f"{name} {epoch}/{settings['epochs']}", disable=disable,
        leave=False,
    )  # fmt: skip
    meter.start_epoch(epoch, steps, batch, done)
    start = time.perf_counter()
    batches = split.batches(batch, order, drop_last=True, first=done)
    for i, (images, labels) in enumerate(batches, done + 1):
        if stopping.requested():
            bar.close()
            partial = {
                "epoch": epoch, "step": i - 1, "lr": row["lr"], "sums": sums.save(),
                "rng": _rng_state(dev), "gen": gen.get_state(),
            }  # fmt: skip
            learner.save_state(state_dir / "state.pt", prog, partial)
            signal = stopping.name(stopping.requested())
            raise stopping.Stopped(
                f"{name}: stopped by {signal} at epoch {epoch}, step {i - 1} of {steps}; "
                f"resumes there ({state_dir})",
                stopping.requested(),
            )
        mix = None
        if learner.mixer is not None:  # drawn from (seed, step): a resumed run draws the same
            mix = learner.mixer.draw(seed, i, *images.shape[-2:])
        loss, correct = learner.step(images, labels, gen, mix)
        sums.add_step(loss, correct, len(labels))
        prog.step += 1
        meter.step(i)
        if prog.step % log_every and i != steps:
            continue
        _check_finite(sums.first_bad, name, epoch, prog.step - i)
        if prog.step % log_every == 0:
            point = {
                "step": prog.step,
                "epoch": epoch,
                "lr": optim.current_lr(learner.opt),
                "loss": sums.win_loss.item() / sums.win_n,
                "acc": sums.win_correct.item() / sums.win_n,
            }
            prog.steps.append(point)
            events.add_scalar("train/acc", 100 * point["acc"], prog.step)  # percent
            for key in ("loss", "lr"):
                events.add_scalar(f"train/{key}", point[key], prog.step)
        sums.end_window()
        bar.set_postfix(
            loss=f"{sums.ep_loss.item() / sums.ep_n:.3f}",
            acc=f"{100 * sums.ep_correct.item() / sums.ep_n:.1f}%",
            img_s=f"{(i - done) * batch / (time.perf_counter() - start):.0f}",
        )
        bar.update(i - bar.n)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    bar.close()
    row["train_loss"] = sums.ep_loss.item() / sums.ep_n
    row["train_acc"] = sums.ep_correct.item() / sums.ep_n
    row["images_per_second"] = round((steps - done) * batch / (time.perf_counter() - start), 1)
    return row


@dataclass
class _Sums:
    """An epoch's running sums, on the device: the current logging window's and the epoch's
    (windows already closed), and the first step of the epoch whose loss was not finite."""

    win_loss: torch.Tensor
    win_correct: torch.Tensor
    win_n: int
    ep_loss: torch.Tensor
    ep_correct: torch.Tensor
    ep_n: int
    step: torch.Tensor  # steps of the epoch so far, counted on the device
    first_bad: torch.Tensor  # -1 while every loss is finite

    @classmethod
    def zero(cls, dev: torch.device) -> _Sums:
        zero = torch.zeros((), device=dev)
        return cls(zero.clone(), zero.clone(), 0, zero.clone(), zero.clone(), 0, zero.clone(),
                   torch.full((), -1.0, device=dev))  # fmt: skip

    def add_step(self, loss: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        self.step += 1
        self.first_bad = torch.where(
            (self.first_bad < 0) & ~torch.isfinite(loss), self.step, self.first_bad
        )
        self.win_loss += loss * n
        self.win_correct += correct
        self.win_n += n

    def end_window(self) -> None:
        self.ep_loss, self.ep_correct = (
            self.ep_loss + self.win_loss,
            self.ep_correct + self.win_correct,
        )
        self.ep_n += self.win_n
        self.win_loss, self.win_correct = (
            torch.zeros_like(self.win_loss),
            torch.zeros_like(self.win_correct),
        )
        self.win_n = 0

    def save(self) -> dict:
        return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()}

    @classmethod
    def load(cls, saved: dict, dev: torch.device) -> _Sums:
        return cls(**{k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in saved.items()})


def _rng_state(dev: torch.device) -> dict:
    """Every random number generator a training step may draw from (dropout and ShakeDrop draw
    from torch's global one), as plain tensors and tuples that load with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict, dev: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], dev)
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    random.setstate(state["python"])


def _check_finite(first_bad: torch.Tensor, name: str, epoch: int, step_offset: int) -> None:
    bad = int(first_bad.item())
    if bad >= 0:
        raise NonFiniteLossError(
            f"experiment {name}: the loss became NaN/inf at epoch {epoch}, step {bad} of the "
            f"epoch (step {step_offset + bad} of the run); lower optimizer.lr in params.yaml, or "
            "check the data and normalisation"
        )


def _keep_failed(folder: Path, state_dir: Path, prog: Progress) -> None:
    """A diverged run's last good checkpoints and history, where its user looks: the engines
    delete a failed job's outputs, and the resume folder is no place to look for them."""
    with io.atomic_dir(folder) as tmp:
        for file in prog.checkpoints:
            io.link_or_copy(state_dir / "checkpoints" / file, tmp / "checkpoints" / file)
        io.write_text(tmp / "history.csv", _csv(prog.history, HISTORY_COLUMNS))
    log.error(
        "the last good checkpoints (%d, up to epoch %d) and the history are in %s",
        len(prog.checkpoints), prog.epoch, folder,
    )  # fmt: skip


def _finished_run(name: str, state_dir: Path) -> tuple[Progress, dict] | None:
    """The progress and run info of a run with this identity that finished before, when its
    checkpoints are all still there and whole; else None (and the folder is cleared)."""
    path = state_dir / stages.FINISHED
    if not path.exists():
        return None
    try:
        record = io.read_record(path)
        prog = Progress(**record["progress"])
        for file, digest in prog.checkpoints.items():
            if manifest.file_digest(state_dir / "checkpoints" / file) != digest:
                raise ValueError(f"{state_dir / 'checkpoints' / file} differs from {path}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: not using the finished run in %s (%s); training again", name,
                    state_dir, str(e).splitlines()[0])  # fmt: skip
        shutil.rmtree(state_dir)
        return None
    log.info(
        "%s: trained before with the same settings, data and code (%s): its results are used "
        "again (remove that folder to train anew)", name, state_dir,
    )  # fmt: skip
    return prog, record["run_info"]


def _finish(out, state_dir, identity, prog, checkpoint_epochs, run_info: dict) -> None:
    """Write the declared outputs from the resume folder, which then keeps only what repeats
    them (a rerun of the same identity: ladder.snakefile reruns a job whose output was damaged,
    and Snakemake the jobs after it). The checkpoints' manifest vouches for the CSV files beside
    the folder too (ladder.manifest), config.json for itself (a record, ladder.io.write_record)."""
    tables = {
        "history.csv": _csv(prog.history, HISTORY_COLUMNS),
        "steps.csv": _csv(prog.steps, STEPS_COLUMNS),
    }
    for file, text in tables.items():
        io.write_text(out / file, text)
    digests = {}
    beside = {f: manifest.bytes_digest(t.encode()) for f, t in tables.items()}
    with manifest.folder(out / "checkpoints", digests, provenance.made_with(), beside) as tmp:
        for epoch in checkpoint_epochs:
            name = checkpoint_name(epoch)
            io.link_or_copy(state_dir / "checkpoints" / name, tmp / name)
            digests[name] = prog.checkpoints[name]
    with io.atomic_dir(out / "tensorboard") as tmp:
        for events in (state_dir / "tensorboard").glob("events.*"):
            io.link_or_copy(events, tmp / events.name)
    io.write_record(
        out / "config.json",
        {
            **{k: v for k, v in identity.items() if k != "data"},
            "fingerprint": config.fingerprint(identity),
            "inputs": identity["data"],
            "checkpoint_epochs": checkpoint_epochs,
            **run_info,
        },
    )
    # What repeats the outputs stays: links to the same checkpoints (no space of their own while
    # the outputs exist), the events, the history; the optimiser's state goes.
    (state_dir / "state.pt").unlink(missing_ok=True)
    io.write_record(state_dir / stages.FINISHED, {"progress": prog.__dict__, "run_info": run_info})
