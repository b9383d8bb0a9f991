"""What a stage command read, and the check that it is still there when the command commits.

A job reads its settings file (results/configs/...) and the small files that stand for its
inputs (folder manifests, stats.json, a run's config.json) through `read_json`, which keeps
each file's digest. Before any output is renamed into place (ladder.io.before_commit), every
file read so far is read again and must be byte for byte what the job started with. Another
command that rewrites the settings while a job runs (an edit of params.yaml, then a run of the
other engine) therefore makes the job fail, naming the file, instead of finishing under settings
it did not use and looking up to date. `made_with()` is the record a job leaves in its outputs.

The large files (prepared arrays, checkpoints) are checked against their manifests' digests when
they are read (ladder.manifest.verify); their manifests, read here, are checked again at commit.

A job is one stage command (`ladder train ...`): ladder.cli runs it inside `job()`. Outside a
job (the stages' functions called directly, as tests do) files are read without being tracked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ladder import digest, io, stages

# In a job: the path as given -> the digest of the bytes first read.
_read: dict[Path, str] | None = None
_stored_at: Path | None = None  # the job's folder of a bucket's local copies (ladder.stages)


@contextlib.contextmanager
def job(stored_at: Path | None = None) -> Iterator[None]:
    """Track what this block reads, and refuse any commit after it changed (see the doc).
    `stored_at`: a file read under it is recorded by its path relative to it, the workspace's
    (Snakemake's copies of a bucket's objects are laid out as the workspace)."""
    global _read, _stored_at
    _read, _stored_at = {}, stored_at
    io.before_commit(check_unchanged)
    try:
        yield
    finally:
        _read, _stored_at = None, None


def _key(path: Path) -> str:
    if _stored_at is not None and path.is_relative_to(_stored_at):
        return path.relative_to(_stored_at).as_posix()
    return str(path)


class InputChangedError(RuntimeError):
    """A file a job read changed before the job committed its outputs."""


def _track(path: Path, data: bytes) -> None:
    if _read is None:
        return
    now = digest.bytes_digest(data)
    if _read.setdefault(path, now) != now:  # read twice, different bytes: it changed meanwhile
        raise _changed(path)


def read_json(path: str | Path) -> Any:
    """io.read_json, remembering the file's digest."""
    data = io.read_bytes(path)
    _track(Path(path), data)
    return io.read_json_bytes(path, data)


def read_record(path: str | Path) -> dict:
    """io.read_record (a record checked against its own digest), remembering its digest; a
    damaged one is refused with the command that regenerates it."""
    try:
        return io.check_record(path, read_json(path))
    except io.RecordError as e:
        raise io.RecordError(f"{e}; {stages.regenerate(path)}") from None


def made_with() -> dict[str, str]:
    """Every file this job read through this module so far, by digest: what an output was made
    from ({} outside a job)."""
    return dict(sorted((_key(path), d) for path, d in (_read or {}).items()))


def _changed(path: Path) -> InputChangedError:
    return InputChangedError(
        f"{path} changed while this job ran (another command rewrote it, e.g. after an edit "
        "of params.yaml): this job's results were not written; run the same command again"
    )


def check_unchanged() -> None:
    """Raise if a file read through this module no longer holds the bytes it held then."""
    for path, expected in (_read or {}).items():
        try:
            now = digest.file_digest(path)
        except FileNotFoundError:
            now = None
        if now != expected:
            raise _changed(path)
