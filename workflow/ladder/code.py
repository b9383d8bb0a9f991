"""The modules whose code determines each stage's results.

Editing one of them reruns that stage in both engines: Snakemake's rules take these files as
inputs (workflow/rules/common.smk) and dvc.yaml lists them as deps (tests check they agree).
Helpers that only move files or parse arguments (io, cli, devices) are left out, so editing
them reruns nothing; what config.py resolves reaches the stages through the settings files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent

_MODELS = ["models/__init__.py", "models/mynet.py", "models/shakedrop.py"]
_RUN = ["augment.py", "loader.py", "inference.py", *_MODELS]

CODE: dict[str, list[str]] = {
    "download": ["data/download.py", "data/archive.py"],
    "prepare": ["data/prepare.py", "data/sources.py"],
    "stats": ["data/stats.py"],
    "train": ["train.py", "optim.py", *_RUN],
    "evaluate": ["evaluate.py", *_RUN],
    "report": [
        "report/__init__.py",
        "report/tables.py",
        "report/figures.py",
        "report/html.py",
        "augment.py",
        "config.py",  # the "changes versus parent" text flattens settings with it
    ],
}


def version(stage: str) -> str:
    """Package version plus a hash of the stage's code: results record the code that made them."""
    from ladder import __version__

    h = hashlib.blake2b(digest_size=8)
    for rel in CODE[stage]:
        h.update(rel.encode())
        h.update((PACKAGE / rel).read_bytes())
    return f"{__version__}+{h.hexdigest()}"
