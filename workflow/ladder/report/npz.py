"""The evaluations' per-image predictions (eval/epoch_NNN.npz, ladder.predictions) as the report
reads them: one archive per checkpoint, 44,455 at 1,000 experiments.

zipfile's Python (the central directory parsed into objects, a file-like reader per member that
inflates and checks the CRC piece by piece) cost about as much as inflating the members. An
archive as `predictions.to_bytes` writes it (stored or deflated members, no encryption, no data
descriptor, no zip64, no comment) is read here with struct: each member inflated in one call,
its length and CRC checked as zipfile checks them. Anything else (another layout, a damaged or
cut-short file) goes to `predictions.read`, which reads it or names what is wrong: the two give
the same arrays for the same bytes (tests/test_report_scale.py).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from ladder import predictions

_END = struct.Struct("<4s4H2LH")  # end of central directory record (22 bytes, no comment)
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # central directory entry (46 bytes and its name)
_LOCAL = struct.Struct("<4s5H3L2H")  # local file header (30 bytes, its name and extra field)
_STORED, _DEFLATED = 0, 8
_UNSUPPORTED_FLAGS = 0x1 | 0x8 | 0x40  # encrypted, sizes in a data descriptor, strong encryption
_ZIP64 = 0xFFFFFFFF  # a size or offset that lives in a zip64 extra field instead


def read(
    path: str | Path, lengths: dict[str, int], kinds: tuple[str, ...], data: bytes
) -> dict[str, np.ndarray]:
    """`predictions.read(path, lengths, kinds, data)`: the same arrays (int16, read-only) or, for
    an archive that is not as `to_bytes` writes it, the same error."""
    arrays = _fast(lengths, kinds, data)
    return predictions.read(path, lengths, kinds, data) if arrays is None else arrays


def _fast(
    lengths: dict[str, int], kinds: tuple[str, ...], data: bytes
) -> dict[str, np.ndarray] | None:
    members = _members(data)
    if members is None or sorted(members) != sorted(f"{k}.npy" for k in lengths):
        return None
    arrays = {}
    for kind, length in lengths.items():
        if kind not in kinds:
            continue
        member = _member(data, *members[f"{kind}.npy"])
        if member is None:
            return None
        try:
            values = predictions._array(member, length)  # the header parsed only if unexpected
        except (ValueError, OSError, EOFError):  # predictions.read names what is wrong
            return None
        if values.dtype != predictions.DTYPE or values.shape != (length,):
            return None
        arrays[kind] = values
    return arrays


def _members(data: bytes) -> dict[str, tuple[int, int, int, int, int]] | None:
    """Name -> (method, CRC, compressed size, size, offset of its data) of every member; None
    for an archive this reader leaves to zipfile."""
    end = len(data) - _END.size
    if end < 0:
        return None
    signature, disk, first_disk, here, count, size, start, comment = _END.unpack_from(data, end)
    if signature != b"PK\x05\x06" or comment or disk or first_disk or here != count:
        return None
    if start + size != end:
        return None
    members: dict[str, tuple[int, int, int, int, int]] = {}
    position = start
    for _ in range(count):
        if position + _CENTRAL.size > end:
            return None
        fields = _CENTRAL.unpack_from(data, position)
        signature, flags, method, crc, packed, unpacked = fields[0], *fields[3:5], *fields[7:10]
        name_length, extra_length, comment_length, offset = *fields[10:13], fields[-1]
        name_end = position + _CENTRAL.size + name_length
        name = data[position + _CENTRAL.size : name_end]
        if (
            signature != b"PK\x01\x02"
            or flags & _UNSUPPORTED_FLAGS
            or method not in (_STORED, _DEFLATED)
            or _ZIP64 in (packed, unpacked, offset)
            or offset + _LOCAL.size > start
        ):
            return None
        local = _LOCAL.unpack_from(data, offset)
        begins = offset + _LOCAL.size + local[9]  # after its header, name and extra field
        if local[0] != b"PK\x03\x04" or data[offset + _LOCAL.size : begins] != name:
            return None
        begins += local[10]
        if begins + packed > start or not name.isascii() or name.decode() in members:
            return None
        members[name.decode()] = (method, crc, packed, unpacked, begins)
        position = name_end + extra_length + comment_length
    return members if position == end else None


def _member(data: bytes, method: int, crc: int, packed: int, size: int, at: int) -> bytes | None:
    """One member's bytes, inflated, or None when they are not what the directory says (its
    length and CRC, as zipfile checks them)."""
    raw = memoryview(data)[at : at + packed]
    try:
        member = zlib.decompress(raw, -15, max(size, 1)) if method == _DEFLATED else bytes(raw)
    except zlib.error:
        return None
    return member if len(member) == size and zlib.crc32(member) == crc else None
