"""Data folders kept by what they were made from, so that making them again costs a link.

`download` and `prepare` write one folder each (results/data/raw, results/data/prepared), for
the dataset params.yaml names now. Switching to another dataset replaces them, and an engine
removes a job's outputs before it reruns the job, so a download of another dataset that fails
would lose the one that worked. So each finished folder is also kept, as hard links (no disk of
their own while the outputs exist), in results/cache/data/<stage>/<key>/, the key a digest of
what it was made from (its `made_with`: the settings file's digest, the raw data's manifest, a
folder dataset's listing) and the stage's code. A stage that finds its key there links the
folder back instead of
making it again: switching datasets and back costs seconds, and a failed download or prepare of
one dataset never deletes another. The KEEP most recent folders of each stage are kept.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ladder import digest, io, manifest, stages

log = logging.getLogger(__name__)

ROOT = Path(stages.CACHE) / "data"
KEEP = 3  # folders kept per stage: the current dataset and the two before it


def _entry(stage: str, made_with: dict, root: Path) -> Path:
    """The folder of what `stage` made from `made_with` with the code it has now."""
    made = {"made_with": made_with, "code": stages.version(stage)}
    key = digest.bytes_digest(json.dumps(made, sort_keys=True).encode())
    return root / stage / key


def _link_folder(src: Path, dst: Path) -> None:
    """`dst` (and its sibling manifest) becomes a copy of `src` made of hard links."""
    # Each file linked straight into atomic_dir's temporary folder, not by io.link_or_copy (per
    # file a temporary name, a scan of its folder for stale ones, the commit checks and two
    # fsyncs: 88% of a folder dataset's import). Nothing in that folder looks finished before
    # its rename, and atomic_dir syncs it first: the links are on disk before they are visible.
    with io.atomic_dir(dst) as tmp:
        folders = {tmp}
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            new = tmp / path.relative_to(src)
            if new.parent not in folders:
                new.parent.mkdir(parents=True, exist_ok=True)
                folders.add(new.parent)
            io.link_new(path, new)
    io.link_or_copy(manifest.sibling(src), manifest.sibling(dst))


def restore(stage: str, made_with: dict, out: str | Path, root: Path = ROOT) -> bool:
    """Link the folder `stage` made before from `made_with` into `out`; False if there is none
    (or it is no longer whole: then it is removed)."""
    if not made_with:
        return False
    out = Path(out)
    kept = _entry(stage, made_with, root) / out.name
    if not kept.is_dir():
        return False
    try:
        # Every byte: in a workspace the kept folder and the output are the same files (links),
        # so an output damaged in place is damaged here too, and must be made again.
        manifest.verify(kept, track=False)
    except manifest.ManifestError as e:
        log.warning("not using %s (%s)", kept, str(e).split("; regenerate", 1)[0])
        shutil.rmtree(kept.parent)
        return False
    _link_folder(kept, out)
    kept.parent.touch()  # recently used
    log.info("%s: made before from the same inputs; linked back from %s", out, kept)
    return True


def keep(stage: str, made_with: dict, out: str | Path, root: Path = ROOT) -> None:
    """Keep the folder `out` that `stage` just made from `made_with` (see the module doc)."""
    if not made_with:
        return
    out = Path(out)
    entry = _entry(stage, made_with, root)
    _link_folder(out, entry / out.name)
    entries = sorted((root / stage).iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
