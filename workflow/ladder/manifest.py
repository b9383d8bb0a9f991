"""Folder outputs as one small file: what the engines compare instead of the folder.

A stage that writes a folder (raw data, prepared arrays, checkpoints, evaluations) builds it under
a temporary name with a `MANIFEST.json` inside (every file's size and digest), renames it into
place, then writes the same manifest beside it as `<folder>.manifest.json`. Downstream stages
depend on that sibling file, never on the folder: both engines compare a few hundred bytes by
content (Snakemake by checksum, DVC by md5), and the large files are hashed once, by the stage
that wrote them, not by the scheduler for every job that reads them.

A reader calls `verify(folder)` before using it: the inner and the sibling manifest must be equal
(a kill between the two renames, or a folder and a manifest from different runs, is caught) and
every listed file present with its size (a cheap check of hand edits; the digests are checked
only by readers that read the bytes anyway, e.g. checkpoints in evaluation).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

from ladder import io

INNER = "MANIFEST.json"
SUFFIX = ".manifest.json"
# Files in an output folder that are no part of the result: Snakemake's timestamp marker.
IGNORED = {INNER, ".snakemake_timestamp"}


class ManifestError(ValueError):
    """A folder does not match its manifest; the message names both and the command to rerun."""


def sibling(folder: str | Path) -> Path:
    """`results/data/prepared` -> `results/data/prepared.manifest.json`."""
    folder = Path(folder)
    return folder.with_name(folder.name + SUFFIX)


def file_digest(path: str | Path) -> str:
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()[:32]


def bytes_digest(data: bytes) -> str:
    return hashlib.blake2b(data).hexdigest()[:32]


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
        "count": len(files),
        "bytes": sum(e["bytes"] for e in files.values()),
        "digest": summary.hexdigest()[:32],
        "files": files,
    }


@contextlib.contextmanager
def folder(path: str | Path, digests: dict[str, str] | None = None) -> Iterator[Path]:
    """Build the folder `path` in a temporary folder (yielded); on success, rename it into place
    with its manifest inside, then write the sibling manifest. `digests` may be filled in by the
    block with digests it already knows."""
    path = Path(path)
    with io.atomic_dir(path) as tmp:
        yield tmp
        manifest = build(tmp, digests)
        io.write_json(tmp / INNER, manifest)
    io.write_json(sibling(path), manifest)


def read(folder: str | Path) -> dict:
    """The sibling manifest of `folder`, checked against the folder (see the module doc)."""
    folder = Path(folder)
    outer, inner = sibling(folder), folder / INNER
    rerun = "rerun the stage that writes it (see README, 'When something goes wrong')"
    if not folder.is_dir():
        raise ManifestError(f"{folder}: folder not found ({rerun})")
    if not outer.exists() or not inner.exists():
        missing = outer if not outer.exists() else inner
        raise ManifestError(f"{missing}: manifest of {folder} not found ({rerun})")
    manifest = io.read_json(outer)
    if io.read_json(inner) != manifest:
        raise ManifestError(
            f"{folder} does not match {outer}: they come from different runs "
            f"(a writer was interrupted, or one was restored without the other); {rerun}"
        )
    for rel, entry in manifest["files"].items():
        path = folder / rel
        if not path.is_file():
            raise ManifestError(f"{path}: listed in {outer} but missing; {rerun}")
        if path.stat().st_size != entry["bytes"]:
            raise ManifestError(f"{path}: changed since {outer} was written; {rerun}")
    return manifest


def check_bytes(folder: str | Path, rel: str, data: bytes, manifest: dict) -> None:
    """A reader that has a file's bytes in memory checks them against the manifest's digest."""
    expected = manifest["files"].get(rel, {}).get("digest")
    if expected != bytes_digest(data):
        raise ManifestError(
            f"{Path(folder) / rel}: content differs from {sibling(folder)} (modified or corrupt); "
            "rerun the stage that writes it"
        )
