"""The `ladder` command: run the code of the workspace it is started in.

Both engines start every stage as `ladder ...` from a workspace's root, and DVC hashes that
workspace's workflow/ladder/ as the stage's code. The installed package may be another copy:
an editable install points at the checkout it was installed from, while a queued DVC experiment
(`dvc exp run --queue`, `dvc queue start`) runs in a copy of the workspace made when it was
queued, and a second clone may share the first one's virtualenv. So when the current folder
holds workflow/ladder/, that copy is imported instead, and a result always comes from the code
dvc.lock records for it. Nothing of the package but this module and `ladder/__init__.py` has
been imported when the switch happens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn


def workspace_package(cwd: Path | None = None) -> Path | None:
    """The workflow/ folder of the workspace at `cwd` if it holds a ladder package that is not
    the one imported now, else None."""
    here = (cwd or Path.cwd()) / "workflow"
    if not (here / "ladder" / "__init__.py").is_file():
        return None
    current = Path(__file__).resolve().parent
    return None if (here / "ladder").resolve() == current else here.resolve()


def main() -> NoReturn:
    other = workspace_package()
    if other is not None:
        for name in [m for m in sys.modules if m == "ladder" or m.startswith("ladder.")]:
            del sys.modules[name]
        sys.path.insert(0, str(other))
    from ladder.cli import main as cli_main

    status = cli_main()
    # Every output is on disk and renamed into place by now (ladder.io), and the log is flushed
    # here: skip the interpreter's shutdown, mostly torch's teardown (about 0.7 CPU-s a job;
    # benchmarks/startup.py).
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`ladder plan | head`)
            stream.flush()
    os._exit(status)
