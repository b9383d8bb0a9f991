"""Safe extraction of .zip and .tar(.gz/.bz2/.xz) archives.

Every member is checked before anything is written: a path that is absolute or climbs out of the
target with `..`, a link, a device or a FIFO rejects the whole archive. Python 3.11's tarfile
extracts without a filter by default, and zipfile silently rewrites such names; we refuse them.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath


class UnsafeArchiveError(ValueError):
    """A member would land outside the target, or is not a plain file or folder."""


class ArchiveError(ValueError):
    """The archive cannot be read (truncated, corrupt, or not an archive)."""


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and (name.endswith(".zip") or ".tar" in name or name.endswith(".tgz"))


def _check_name(archive: Path, name: str) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or name.startswith(("/", "\\")) or (pure.parts and ":" in pure.parts[0]):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path")
    if ".." in pure.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would land outside the target folder")


def _zip_members(archive: Path, zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        _check_name(archive, info.filename)
        # Unix mode bits, when the archiver recorded them; no file-type bits means a plain file.
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchiveError(
                f"{archive}: member {info.filename!r} is a link or special file"
            )


def _tar_members(archive: Path, tf: tarfile.TarFile) -> None:
    for member in tf.getmembers():
        _check_name(archive, member.name)
        if not (member.isfile() or member.isdir()):
            kind = "link" if member.issym() or member.islnk() else "device or special file"
            raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a {kind}")


def extract(archive: str | Path, target: str | Path, source: str | None = None) -> None:
    """Extract `archive` into `target` after checking every member; errors name `source` (what
    the user gave: a URL, or a dataset key and path), else the archive."""
    archive, target = Path(archive), Path(target)
    if source is not None:
        try:
            return extract(archive, target)
        except (UnsafeArchiveError, ArchiveError) as e:
            raise type(e)(str(e).replace(str(archive), source, 1)) from None
    target.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _zip_members(archive, zf)
                bad = zf.testzip()  # CRC check of every member before writing any
                if bad is not None:
                    raise ArchiveError(f"{archive}: member {bad!r} is corrupt (CRC mismatch)")
                zf.extractall(target)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                _tar_members(archive, tf)
                # The "data" filter is a second line of defence behind our own checks.
                tf.extractall(target, filter="data")
        else:
            raise ArchiveError(f"{archive}: not a zip or tar archive (truncated or corrupt?)")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise ArchiveError(f"{archive}: cannot be read, truncated or corrupt ({e})") from None
