"""Folder outputs as one small file: what the engines compare instead of the folder.

A stage that writes a folder (raw data, prepared arrays, checkpoints, evaluations) builds it under
a temporary name with a `MANIFEST.json` inside (every file's size and digest), renames it into
place, then writes the same manifest beside it as `<folder>.manifest.json`. Downstream stages
depend on that sibling file, never on the folder: both engines compare a few hundred bytes by
content (Snakemake by checksum, DVC by md5), and the large files are hashed once, by the stage
that wrote them, not by the scheduler for every job that reads them.

The inner manifest also says what the folder was made with (`made_with`: the settings files and
inputs the stage read, by digest) and vouches for files the job wrote beside the folder
(`beside`, e.g. a run's history.csv); the sibling leaves both out, so that a job downstream
reruns only when the folder's content changes.

Two checks, by cost:
- `read(folder)`: the inner and sibling manifests agree (a kill between the two renames, or a
  folder and a manifest from different runs, is caught) and every listed file is there with its
  size. Cheap (a stat per file): both engines' planning runs it (ladder.snakefile; DVC sees
  missing and resized files itself).
- `verify(folder, names)`: `read`, then the digest of every named file. A reader calls it for the
  files it is about to use, so a file damaged in place (same size, timestamp kept) is refused,
  with the command that regenerates only it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from ladder import digest, io, stages

INNER = "MANIFEST.json"
SUFFIX = ".manifest.json"
# Files in an output folder that are no part of the result: Snakemake's timestamp marker.
IGNORED = {INNER, ".snakemake_timestamp"}
MADE_WITH = "made_with"  # inner manifest only: what the folder was made from
BESIDE = "beside"  # inner manifest only: files the same job wrote next to the folder, by digest
_INNER_ONLY = (MADE_WITH, BESIDE)


class ManifestError(ValueError):
    """A folder does not match its manifest; the message names the file and the command that
    regenerates it."""


def sibling(folder: str | Path) -> Path:
    """`results/data/prepared` -> `results/data/prepared.manifest.json`."""
    folder = Path(folder)
    return folder.with_name(folder.name + SUFFIX)


def algorithm(manifest: dict) -> str:
    return manifest.get("algorithm", digest.LEGACY)


def file_digest(path: str | Path) -> str:
    return digest.file_digest(path)


def bytes_digest(data: bytes) -> str:
    return digest.bytes_digest(data)


def build(folder: str | Path, digests: dict[str, str] | None = None) -> dict:
    """The manifest of `folder`: every file (relative POSIX path) with its size and digest.
    `digests` gives digests the writer already knows (it had the bytes in memory)."""
    folder = Path(folder)
    digests = digests or {}
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in IGNORED:
            continue
        files[rel] = {"bytes": path.stat().st_size, "digest": digests.get(rel) or file_digest(path)}
    summary = hashlib.blake2b()
    for rel, entry in files.items():
        summary.update(f"{rel}\0{entry['digest']}\n".encode())
    return {
        "algorithm": digest.ALGORITHM,
        "count": len(files),
        "bytes": sum(e["bytes"] for e in files.values()),
        "digest": summary.hexdigest()[:32],
        "files": files,
    }


@contextlib.contextmanager
def folder(
    path: str | Path,
    digests: dict[str, str] | None = None,
    made_with: dict | None = None,
    beside: dict[str, str] | None = None,
) -> Iterator[Path]:
    """Build the folder `path` in a temporary folder (yielded); on success, rename it into place
    with its manifest inside, then write the sibling manifest. `digests` may be filled in by the
    block with digests it already knows; `made_with` records what the folder was made from,
    `beside` the digests of files written next to it."""
    path = Path(path)
    with io.atomic_dir(path) as tmp:
        yield tmp
        manifest = build(tmp, digests)
        io.write_json(tmp / INNER, {**manifest, MADE_WITH: made_with or {}, BESIDE: beside or {}})
    io.write_json(sibling(path), manifest)


def _damaged(path: Path, what: str) -> ManifestError:
    return ManifestError(f"{path}: {what}; {stages.regenerate(path)}")


def read(folder: str | Path, track: bool = True) -> dict:
    """The sibling manifest of `folder`, checked against the folder (see the module doc). A
    job's reads are tracked (ladder.provenance) unless `track` is off: a folder the job only
    consults, such as a cache's."""
    from ladder import provenance

    folder = Path(folder)
    outer, inner = sibling(folder), folder / INNER
    if not folder.is_dir():
        if outer.exists() and not stages.dvc_keeps_files(folder):
            # A clone after `dvc pull`, or a user who freed the disk.
            raise _damaged(
                folder,
                f"folder not found (DVC keeps only {outer}, not the files: `dvc pull` and "
                "`dvc checkout` leave it out)",
            )
        raise _damaged(folder, "folder not found")
    if not outer.exists() or not inner.exists():
        missing = outer if not outer.exists() else inner
        raise _damaged(missing, f"manifest of {folder} not found")
    manifest = provenance.read_json(outer) if track else io.read_json(outer)
    try:
        inner_manifest = io.read_json(inner)
    except ValueError as e:
        raise _damaged(inner, str(e).split(": ", 1)[-1]) from None
    if {k: v for k, v in inner_manifest.items() if k not in _INNER_ONLY} != manifest:
        raise _damaged(
            folder,
            f"does not match {outer}: they come from different runs (a writer was interrupted, "
            "or one was restored without the other)",
        )
    for rel, entry in manifest["files"].items():
        path = folder / rel
        try:
            st = path.stat()  # one system call per file: a plan runs this on every folder
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise _damaged(path, f"listed in {outer} but missing")
        if st.st_size != entry["bytes"]:
            raise _damaged(path, f"changed since {outer} was written (its size differs)")
    return manifest


def _inner(folder: str | Path, key: str) -> dict:
    try:
        return io.read_json(Path(folder) / INNER).get(key, {})
    except (FileNotFoundError, ValueError):
        return {}


def made_with(folder: str | Path) -> dict:
    """What the folder was made from (the inner manifest's record); {} when it says nothing."""
    return _inner(folder, MADE_WITH)


def verify_beside(folder: str | Path, names: Iterable[str] | None = None) -> None:
    """Check the files beside `folder` that its inner manifest vouches for (all, or `names`)."""
    folder = Path(folder)
    vouched = _inner(folder, BESIDE)
    for name in vouched if names is None else names:
        path = folder.parent / name
        if name not in vouched:
            raise _damaged(path, f"not vouched for by {folder / INNER}")
        try:
            now = file_digest(path)
        except FileNotFoundError:
            raise _damaged(path, f"missing (vouched for by {folder / INNER})") from None
        if now != vouched[name]:
            raise _damaged(path, f"content differs from what {folder / INNER} recorded")


def verify(folder: str | Path, names: Iterable[str] | None = None, track: bool = True) -> dict:
    """`read(folder)`, then the digest of each of `names` (files of the folder; all when None);
    return the manifest. The check before a stage uses a file it did not write."""
    folder = Path(folder)
    manifest = read(folder, track)
    names = manifest["files"] if names is None else names
    for rel in names:
        entry = manifest["files"].get(rel)
        path = folder / rel
        if entry is None:
            raise _damaged(path, f"not listed in {sibling(folder)}")
        if digest.file_digest(path, algorithm(manifest)) != entry["digest"]:
            raise _damaged(path, f"content differs from {sibling(folder)} (damaged or edited)")
    return manifest


def checked_bytes(folder: str | Path, rel: str, manifest: dict) -> bytes:
    """The bytes of the file `rel` of `folder`, checked against `manifest` (`read(folder)`'s):
    a reader of many small files reads each once and parses the bytes it checked (`verify`,
    then a read, reads every file twice)."""
    # No Path made: the report reads 89,000 files at 1,000 experiments.
    data = io.read_bytes(os.path.join(folder, rel))  # noqa: PTH118
    check_bytes(folder, rel, data, manifest)
    return data


def check_bytes(folder: str | Path, rel: str, data: bytes, manifest: dict) -> None:
    """A reader that has a file's bytes in memory checks them against the manifest's digest."""
    expected = manifest["files"].get(rel, {}).get("digest")
    if expected != digest.bytes_digest(data, algorithm(manifest)):
        path = Path(folder) / rel
        raise _damaged(path, f"content differs from {sibling(folder)} (damaged or edited)")
