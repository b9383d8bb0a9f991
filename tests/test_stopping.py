"""ladder.stopping: the signals that ask a job to stop, and the second one that stops it at once.
Training and evaluation stopping at their safe points are tested in test_train.py and
test_evaluate.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import Deadline
from ladder import stopping


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_signal_inside_graceful_is_a_request_not_an_exit(signum):
    before = signal.getsignal(signum)
    with stopping.graceful():
        assert stopping.requested() is None
        os.kill(os.getpid(), signum)  # Python runs the handler before the next line
        assert stopping.requested() == signum
    assert signal.getsignal(signum) is before  # the process's own handling again
    assert stopping.requested() is None
    with stopping.graceful():
        assert stopping.requested() is None  # a new job starts unasked


SECOND_SIGNAL = textwrap.dedent(
    """
    import os, signal, sys, time
    from ladder import stopping
    stopping.REPEAT_SECONDS = float(sys.argv[1])
    with stopping.graceful():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # at once: the same request delivered twice
        print("asked", stopping.requested(), flush=True)
        time.sleep(stopping.REPEAT_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)  # later: asked again
        time.sleep(60)
        print("not stopped", flush=True)
    """
)


def test_a_second_signal_stops_the_process_at_once_a_duplicate_does_not():
    bound = Deadline("a process that should die on its second SIGTERM", expected=2)
    proc = subprocess.run(
        [sys.executable, "-c", SECOND_SIGNAL, "0.5"], capture_output=True, text=True,
        timeout=bound.seconds,
    )  # fmt: skip
    assert proc.stdout == f"asked {int(signal.SIGTERM)}\n", proc.stderr
    assert proc.returncode == -signal.SIGTERM  # killed by it, as without a handler
    assert "received SIGTERM: stopping at the next safe point" in proc.stderr
