"""A folder dataset's files as the engines see them: what `download` imports from
`dataset.path` and `dataset.test_path`, which live outside the workspace.

Both engines rerun the import when those files change:
- Snakemake: `download` records the listing of each folder (every file's name, size and
  modification time) in what it made (ladder.manifest.made_with); as the Snakefile loads, the
  listing is taken again, and a different one forces the import (ladder.snakefile).
- DVC: results/data/source/{path,test_path} are links to those folders, outputs of
  `configure`: DVC hashes what they point to (its state cache keyed on each file's inode, size
  and mtime), and `configure`, rerun when that changes, records the listings that `download`
  depends on (ladder.data.source_links).
So in both an edit is seen through names, sizes and mtimes; one that keeps a file's size and
mtime (`cp -p`, `touch -r`) is not, by either engine: `touch` the file, or force the import
(README, "When something goes wrong").

Light: the Snakefile imports it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

KEYS = ("path", "test_path")  # the dataset keys that name folders (or archives) to import


def listing(path: str | Path) -> str:
    """A digest of every file under `path` (a folder, or a single file such as an archive): its
    relative name, size and modification time in nanoseconds."""
    root = Path(path)
    h = hashlib.blake2b(digest_size=16)
    entries = [(root, "")] if root.is_file() else []
    if root.is_dir():
        for folder, dirs, files in os.walk(root, followlinks=True):
            dirs.sort()
            for name in sorted(files):
                full = Path(folder) / name
                entries.append((full, full.relative_to(root).as_posix()))
    for full, rel in entries:
        st = full.stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def listings(settings: dict) -> dict[str, str]:
    """`dataset.<key>` -> listing, for each folder key the download settings set."""
    return {
        f"dataset.{k}": listing(settings[k])
        for k in KEYS
        if settings.get(k) and Path(settings[k]).exists()  # a missing one: the import says so
    }
