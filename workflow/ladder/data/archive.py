"""Safe extraction of .zip and .tar(.gz/.bz2/.xz) archives.

Every member is checked before anything is written: a path that is absolute or climbs out of the
target with `..`, a link, a device or a FIFO rejects the whole archive. Python 3.11's tarfile
extracts without a filter by default, and zipfile silently rewrites such names; we refuse them.

So is an archive whose members add up to more than a limit, more than a ratio times the archive's
size (a zip bomb), or more than the free disk space. The sizes in the headers are enough: zipfile
stops a member at its header's size (and then fails its CRC check, tested), and tarfile copies
exactly a member's header size, so no member writes more than its header says.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

GB, MB, KB = 10**9, 10**6, 10**3

# Runtime safety settings, not part of what a dataset means: environment variables, so changing
# them reruns nothing. Tiny ImageNet extracts to under 1 GB, ImageNet-64-sized sets to 10-20 GB;
# JPEG and PNG datasets compress about 1:1, a zip bomb 1000:1 and more.
MAX_GB_VAR, MAX_GB = "LADDER_ARCHIVE_MAX_GB", 50.0
MAX_RATIO_VAR, MAX_RATIO = "LADDER_ARCHIVE_MAX_RATIO", 100.0

# Left free after extracting: a file takes up to a block more than its size (Tiny ImageNet has
# 120,000 small files), and the manifest and logs need a little room too.
BLOCK, MARGIN = 4096, 100 * MB


class UnsafeArchiveError(ValueError):
    """A member would land outside the target, or is not a plain file or folder."""


class ArchiveError(ValueError):
    """The archive cannot be read (truncated, corrupt, or not an archive)."""


class ArchiveTooLargeError(ValueError):
    """The members add up to more than a limit, or than the free space, allows."""


@dataclass(frozen=True)
class Limits:
    max_bytes: float
    max_ratio: float


def limits_from_env() -> Limits:
    """LADDER_ARCHIVE_MAX_GB and LADDER_ARCHIVE_MAX_RATIO, or their defaults."""
    return Limits(
        max_bytes=_positive(MAX_GB_VAR, MAX_GB) * GB,
        max_ratio=_positive(MAX_RATIO_VAR, MAX_RATIO),
    )


def _positive(var: str, default: float) -> float:
    text = os.environ.get(var, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:  # also refuses nan
        raise ValueError(f"{var}={text!r}: not a positive number (the default is {default:g})")
    return value


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


def _tar_members(archive: Path, tf: tarfile.TarFile) -> Iterator[int]:
    """Check each member and yield its size, header by header: a compressed tar is read as it
    goes, so a bomb is refused before its data is decompressed."""
    for member in tf:
        _check_name(archive, member.name)
        if not (member.isfile() or member.isdir()):
            kind = "link" if member.issym() or member.islnk() else "device or special file"
            raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a {kind}")
        yield member.size


def _check_sizes(archive: Path, sizes: Iterable[int], limits: Limits, free: int) -> None:
    """Refuse as soon as the running total of the members' sizes passes a limit."""
    packed = max(archive.stat().st_size, 1)
    total = count = 0
    for size in sizes:
        total, count = total + size, count + 1
        needed = total + count * BLOCK + MARGIN
        if total > limits.max_bytes:
            raise ArchiveTooLargeError(
                f"{archive}: extracts to {_size(total)} or more, over the limit of "
                f"{_size(limits.max_bytes)}; nothing was extracted. If the dataset is that "
                f"large, raise {MAX_GB_VAR} (now {limits.max_bytes / GB:g})"
            )
        if total / packed > limits.max_ratio:
            raise ArchiveTooLargeError(
                f"{archive}: extracts to {_size(total)} or more from {_size(packed)}, a "
                f"compression ratio of {total / packed:.0f}:1 (image datasets compress about "
                f"1:1, zip bombs 1000:1 and more); nothing was extracted. If you trust the "
                f"archive, raise {MAX_RATIO_VAR} (now {limits.max_ratio:g})"
            )
        if needed > free:
            raise ArchiveTooLargeError(
                f"{archive}: extracts to {_size(total)} or more (about {_size(needed)} on "
                f"disk), but only {_size(free)} is free there; nothing was extracted. Free "
                "some space and run again"
            )


def _size(n: float) -> str:
    unit, name = (GB, "GB") if n >= GB else (MB, "MB") if n >= MB else (KB, "kB")
    return f"{n / unit:.1f} {name}"


def extract(
    archive: str | Path,
    target: str | Path,
    source: str | None = None,
    limits: Limits | None = None,
) -> None:
    """Extract `archive` into `target` after checking every member and their sizes against
    `limits` (default: limits_from_env()); errors name `source` (what the user gave: a URL, or
    a dataset key and path), else the archive."""
    archive, target = Path(archive), Path(target)
    if source is not None:
        try:
            return extract(archive, target, limits=limits)
        except (UnsafeArchiveError, ArchiveError, ArchiveTooLargeError) as e:
            raise type(e)(str(e).replace(str(archive), source, 1)) from None
    limits = limits or limits_from_env()
    target.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target).free
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _zip_members(archive, zf)
                _check_sizes(archive, (i.file_size for i in zf.infolist()), limits, free)
                # CRC check of every member before writing any; it also catches a member that
                # decompresses to more than its header says (zipfile cuts it at that size).
                bad = zf.testzip()
                if bad is not None:
                    raise ArchiveError(f"{archive}: member {bad!r} is corrupt (CRC mismatch)")
                zf.extractall(target)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                _check_sizes(archive, _tar_members(archive, tf), limits, free)
                # The "data" filter is a second line of defence behind our own checks.
                tf.extractall(target, filter="data")
        else:
            raise ArchiveError(f"{archive}: not a zip or tar archive (truncated or corrupt?)")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise ArchiveError(f"{archive}: cannot be read, truncated or corrupt ({e})") from None
