"""The `ladder` command skips the interpreter's shutdown once a command is done (os._exit, to
save torch's teardown): what it printed still arrives whole through a pipe, and its exit status
is the command's."""

from __future__ import annotations

import os
import subprocess

from conftest import BIN, REPO

DEMO = REPO / "config" / "demo.yaml"


def ladder(*args: str, cwd) -> subprocess.CompletedProcess:
    # Python buffers a pipe's output unless PYTHONUNBUFFERED is set (as on some machines).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run([str(BIN / "ladder"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip


def test_what_ladder_prints_arrives_whole_through_a_pipe(tmp_path):
    done = ladder("status", "--params", str(DEMO), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("5 experiment(s): 5 waiting\n"), done.stdout


def test_the_exit_status_is_the_command_s(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiments: {x: {epochs: -1}}\n")
    done = ladder("check", str(bad), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "epochs" in done.stderr
