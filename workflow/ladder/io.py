"""Atomic file output: write to a temporary name in the same folder, then rename into place.

A killed job never leaves a file that looks finished, and a file DVC hard-linked from its cache is
replaced, never modified in place (a write through the link would corrupt the cache). What is
renamed into place is on disk first (fsync; a folder's whole file system with one syncfs), and
the rename itself after: after a power cut a finished name holds finished content. So a command
may end without the interpreter's shutdown once it has written its outputs (ladder.launch).

Every rename into place first runs the hooks registered with `before_commit` (ladder.provenance
checks there that the settings a job started with are still the ones on disk), so a job whose
inputs changed under it commits nothing.

Records: JSON files the project writes and reads back itself (settings, stats, a run's
config.json, cached evaluations) carry a digest of their own content (`write_record`), which
`read_record` checks: a value edited in place is refused even when the file keeps its size and
timestamp.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from ladder import digest

_before_commit: list[Callable[[], None]] = []
RECORD_DIGEST = "content_digest"  # a record's own digest (see the module doc)


class RecordError(ValueError):
    """A record's content does not match its own digest."""


def before_commit(hook: Callable[[], None]) -> None:
    """Run `hook` before every rename into place in this process (it raises to refuse)."""
    if hook not in _before_commit:
        _before_commit.append(hook)


def _commit_checks() -> None:
    for hook in _before_commit:
        hook()


def _remove_stale(path: Path) -> None:
    """Remove temporaries a killed writer of `path` left behind (one job writes each output)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A full disk (or quota) while writing `path` fails with an error that names it."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) or str(path) in str(e):
            raise
        try:
            free = f"{shutil.disk_usage(path.parent).free / 1e6:.0f} MB free"
        except OSError:
            free = "free space unknown"
        raise OSError(
            e.errno,
            f"{path}: no space left on the device while writing it ({free}); nothing was "
            "left half-written: free some space, then run the same command again",
        ) from None


@contextlib.contextmanager
def _descriptor(path: Path) -> Iterator[int]:
    """A read-only descriptor of a file or a folder (what fsync and syncfs take)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    """A file's content, or a folder's entries (a rename into it), on disk."""
    with _descriptor(path) as fd:
        os.fsync(fd)


def _sync_tree(path: Path) -> None:
    """Every file under `path` on disk: one syncfs(2) of its file system (a raw tree of 100,000
    files would take 100,000 fsyncs), or, where that call is missing or fails, one fsync per
    file."""
    syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    if syncfs is not None:
        with _descriptor(path) as fd:
            if syncfs(fd) == 0:
                return
    for f in path.rglob("*"):
        if f.is_file() and not f.is_symlink():
            _fsync(f)


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int | None = 0o644) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it to `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        with _naming(path):
            yield tmp
        if mode is not None:  # mkstemp makes 0600 files
            tmp.chmod(mode)
        _fsync(tmp)  # on disk before its name says it is finished (a power cut, a crash)
        _commit_checks()
        tmp.replace(path)
        _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; it replaces `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with _naming(path):
            yield tmp
        tmp.chmod(0o755)  # mkdtemp makes 0700 folders
        _sync_tree(tmp)
        _commit_checks()
        if path.exists():
            shutil.rmtree(path)
        tmp.replace(path)
        _fsync(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_text(obj: Any) -> str:
    """The project's JSON layout: sorted keys, two-space indents, a final newline."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    """Sorted keys and a fixed layout: equal settings give byte-identical files in both engines."""
    write_text(path, json_text(obj))


def write_if_changed(path: str | Path, text: str) -> bool:
    """Write `text` to `path`, unless the file already holds exactly that; True if it wrote."""
    path = Path(path)
    try:
        if path.read_text() == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    write_text(path, text)
    return True


def record_text(obj: dict) -> str:
    """The text of a record: `obj` with the digest of its canonical JSON added."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return json_text({**obj, RECORD_DIGEST: digest.bytes_digest(canonical.encode())})


def write_record(path: str | Path, obj: dict) -> None:
    write_text(path, record_text(obj))


def check_record(path: str | Path, obj: Any) -> dict:
    """`obj` (a record read from `path`) without its digest, which must match its content."""
    if not isinstance(obj, dict) or RECORD_DIGEST not in obj:
        raise RecordError(f"{path}: not a record written by ladder (no {RECORD_DIGEST})")
    obj = dict(obj)
    recorded = obj.pop(RECORD_DIGEST)
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    if digest.bytes_digest(canonical.encode()) != recorded:
        raise RecordError(f"{path}: its content does not match its digest (edited or damaged)")
    return obj


def read_record(path: str | Path) -> dict:
    return check_record(path, read_json(path))


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes; a missing file is named."""
    try:
        with open(path, "rb") as f:  # noqa: PTH123 (no Path made: the report reads 89,000)
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None


def read_json(path: str | Path, int64: bool = False) -> Any:
    """The JSON in `path`. `int64`: its integers fit in 64 bits (an evaluation's: epochs,
    counts, class indices), so orjson may parse it, 3-4x faster than json (the report reads tens
    of thousands), to the same values; orjson would read a larger integer as a float."""
    return read_json_bytes(path, read_bytes(path), int64)


def read_json_bytes(path: str | Path, data: bytes, int64: bool = False) -> Any:
    """The JSON in `data` (the bytes of `path`, named in errors); `int64` as in read_json."""
    if int64:
        with contextlib.suppress(orjson.JSONDecodeError):  # NaN, say: json reads it, or names why
            return orjson.loads(data)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link `src` to `dst` (atomically replacing it), copying across file systems."""
    dst = Path(dst)
    with atomic_path(dst, mode=None) as tmp:
        tmp.unlink()
        link_new(src, tmp)


def link_new(src: str | Path, dst: str | Path) -> None:
    """Hard-link `src` to the new name `dst`, copying across file systems: no temporary name
    and no fsync, for names nothing reads as finished yet (inside `atomic_dir`'s folder, whose
    one sync before its rename makes the links, and any copy, durable)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
