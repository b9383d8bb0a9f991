"""Graceful stop for the long jobs (training, evaluation).

A scheduler stops a job with SIGTERM before it kills it: SLURM at a time limit or on preemption
(KillWait or GraceTime seconds before SIGKILL), Kubernetes on eviction, Snakemake and DVC when
they are interrupted; Ctrl-C sends SIGINT; `sbatch --signal` can send SIGUSR1 as an early
warning. Inside `graceful()` the first of these only sets a flag. The job polls it at its safe
points (training after each optimiser step, evaluation between checkpoints), saves what it has
and raises `Stopped`, which `ladder` turns into one log line and exit status 128 + the signal's
number. A second signal ends the process at once: every file is written atomically, so that
loses only work not yet saved. Only a second signal that comes REPEAT_SECONDS or more after the
first, though: SLURM delivers one SIGTERM twice within milliseconds (to every process of the job
step, and again through srun, which forwards it), and a job killed by that copy saves nothing
(tests/test_slurm.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

# A signal this soon after the first is the same request, delivered twice.
REPEAT_SECONDS = 2.0

_received: int | None = None  # the first signal received inside graceful(), by number
_received_at = 0.0  # when, by time.monotonic()


class Stopped(Exception):
    """A job stopped on request, having saved what it had."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # as if killed by the signal, which the shell reports so


def requested() -> int | None:
    """The signal that asked this job to stop, or None."""
    return _received


def name(signum: int) -> str:
    return signal.Signals(signum).name


def _handle(signum: int, _frame) -> None:
    global _received, _received_at
    if _received is not None:
        if time.monotonic() - _received_at < REPEAT_SECONDS:
            return  # the first request again
        # Asked again: stop now, as if no handler were installed.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _received, _received_at = signum, time.monotonic()
    log.warning(
        "received %s: stopping at the next safe point and saving progress (send it again "
        "%.0f s or more later to stop at once)", name(signum), REPEAT_SECONDS,
    )  # fmt: skip


@contextlib.contextmanager
def graceful() -> Iterator[None]:
    """Defer SIGTERM, SIGINT and SIGUSR1 to the job's safe points while the block runs."""
    global _received
    _received = None
    previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received = None  # outside the block nothing polls it
