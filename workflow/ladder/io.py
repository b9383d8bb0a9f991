"""Atomic file output: write to a temporary name in the same folder, then rename into place.

A killed job never leaves a file that looks finished, and a file DVC hard-linked from its cache is
replaced, never modified in place (a write through the link would corrupt the cache).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
        tmp.replace(path)
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
        if path.exists():
            shutil.rmtree(path)
        tmp.replace(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    """Sorted keys and a fixed layout: equal settings give byte-identical files in both engines."""
    write_text(path, _json_text(obj))


def write_json_if_changed(path: str | Path, obj: Any) -> bool:
    """write_json, unless the file already holds exactly that; True if it wrote."""
    path, text = Path(path), _json_text(obj)
    try:
        if path.read_text() == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    write_text(path, text)
    return True


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link `src` to `dst` (atomically replacing it), copying across file systems."""
    dst = Path(dst)
    with atomic_path(dst, mode=None) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
