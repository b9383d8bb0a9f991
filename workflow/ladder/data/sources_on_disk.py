"""A folder dataset's files as the engines see them: what `download` imports from
`dataset.path` and `dataset.test_path`, which live outside the workspace.

Both engines rerun the import when those files change:
- Snakemake: `download` records the listing of each folder (every file's name, size and
  modification time) in what it made (ladder.manifest.made_with); as the Snakefile loads, the
  listing is taken again, and a different one forces the import (ladder.snakefile).
- DVC: results/data/source/{path,test_path} are links to those folders (an empty folder for an
  unset one), made by `configure`, and dependencies of `download`: DVC hashes what they point
  to (its state cache keyed on each file's inode, size and mtime). `configure`'s output is
  `links.json` beside them (what each link names), not the links: as an output too, every
  folder would be hashed twice per `dvc status` (65 µs a file instead of 36, measured at 20k
  files). A workspace without the record (a clone after `dvc pull`) reruns `configure`, which
  makes the links again.
So in both an edit is seen through names, sizes and mtimes; one that keeps a file's size and
mtime (`cp -p`, `touch -r`) is not, by either engine: `touch` the file, or force the import
(README, "When something goes wrong").

Light: the Snakefile imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ladder import io

KEYS = ("path", "test_path")  # the dataset keys that name folders (or archives) to import
LINKS = "links.json"  # beside the links: what each names (configure's output in DVC)


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


def write_links(settings: dict, root: str | Path) -> None:
    """results/data/source/<key>: a link to the folder `settings[key]` names, or an empty folder
    when it names none, or none that exists (DVC needs a path it can hash either way; the import
    says what is missing)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = {}
    for key in KEYS:
        link = root / key
        target = settings.get(key)
        want = Path(target).resolve() if target and Path(target).exists() else None
        names[key] = None if want is None else str(want)
        if want is not None and link.is_symlink() and link.readlink() == want:
            continue
        if want is None and link.is_dir() and not link.is_symlink() and not any(link.iterdir()):
            continue
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            link.rmdir()  # an empty placeholder; never anything else
        if want is None:
            link.mkdir()
        else:
            tmp = root / f".{key}.tmp"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(want)
            tmp.replace(link)
    # Written after the links: where the record is, they are.
    io.write_if_changed(root / LINKS, json.dumps(names, indent=1, sort_keys=True) + "\n")
