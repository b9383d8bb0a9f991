"""Progress lines for logs nobody watches live: under Snakemake, DVC or SLURM there is no
terminal, so no progress bar, and an epoch of Tiny ImageNet takes minutes. A `Meter` writes a log
line at most every `every` seconds during an epoch: step, images/s, and how long the epoch and
the whole run still need.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("ladder.train")


def duration(seconds: float) -> str:
    """3725 -> '1h02m', 65 -> '1m05s', 4.2 -> '4s'."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Meter:
    """Progress of one training run, epoch by epoch; `history` holds the rows of the epochs
    done before (a resumed run's), whose times estimate the epochs to come."""

    def __init__(self, name: str, epochs: int, every: float, history: list[dict]):
        self.name, self.epochs, self.every = name, epochs, every
        self.epoch_seconds = [float(row["seconds"]) for row in history]

    def start_epoch(self, epoch: int, steps: int, batch: int, done: int = 0) -> None:
        """`done`: steps of the epoch run before this session (a run stopped mid-epoch)."""
        self.epoch, self.steps, self.batch, self.done = epoch, steps, batch, done
        self.started = self.last = time.perf_counter()

    def step(self, i: int) -> None:
        """After step `i` (1-based) of the epoch; logs when `every` seconds have passed."""
        now = time.perf_counter()
        if now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.started
        per_step = elapsed / (i - self.done)  # this session's steps
        epoch_left = per_step * (self.steps - i)
        per_epoch = (
            sum(self.epoch_seconds) / len(self.epoch_seconds)
            if self.epoch_seconds
            else per_step * self.steps
        )
        run_left = epoch_left + per_epoch * (self.epochs - self.epoch)
        log.info(
            "%s epoch %d/%d step %d/%d (%.0f%%), %.0f img/s; epoch ETA %s, run ETA %s",
            self.name, self.epoch, self.epochs, i, self.steps, 100 * i / self.steps,
            (i - self.done) * self.batch / elapsed, duration(epoch_left), duration(run_left),
        )  # fmt: skip

    def end_epoch(self, seconds: float) -> None:
        self.epoch_seconds.append(seconds)
