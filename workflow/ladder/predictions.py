"""Per-image predictions of one evaluated checkpoint: eval/epoch_NNN.npz beside epoch_NNN.json.

The JSON holds the accuracies; this file holds what they were counted from, so the report can
put an interval on every accuracy and compare two runs image by image (ladder.report.
significance). One .npz archive (numpy's format: `np.load` reads it) with one array per kind of
prediction, each a 1-D int16 array of predicted class indices in the order of the prepared
split's images (`val_y.npy`, `test_y.npy` hold the labels):

    val_plain   val split, one plain pass (no TTA): the val accuracy
    test_plain  test split, one plain pass: the test accuracy, the result
    test_tta    test split, the TTA majority vote (only when TTA is on)

int16 holds up to 32,767 classes in 2 bytes per image; the members are deflated (about 1 byte
per image for 200 classes), and written with fixed timestamps, so the same predictions always
give the same bytes (the eval folder's manifest, and with it the report, changes only with the
content).
"""

from __future__ import annotations

import functools
import io as stdio
import zipfile
import zlib
from pathlib import Path

import numpy as np

SUFFIX = ".npz"
DTYPE = np.dtype(np.int16)
# Kind -> the split whose images (and labels) it covers.
SPLITS = {"val_plain": "val", "test_plain": "test", "test_tta": "test"}
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


class PredictionsError(ValueError):
    """A predictions file is missing, cut short, or does not hold what its evaluation says."""


def expected(images: dict[str, int], tta: bool) -> dict[str, int]:
    """Kind -> length, for an evaluation of `images` ({"val": n, "test": n}), with or without
    TTA."""
    kinds = [k for k in SPLITS if tta or k != "test_tta"]
    return {k: int(images[SPLITS[k]]) for k in kinds}


def to_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The .npz archive of `arrays` (kind -> class indices), byte-identical for equal input."""
    unknown = sorted(set(arrays) - set(SPLITS))
    if unknown:
        raise ValueError(f"predictions: unknown kinds {unknown} (known: {', '.join(SPLITS)})")
    buf = stdio.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for kind in SPLITS:
            if kind not in arrays:
                continue
            values = np.asarray(arrays[kind])
            if values.ndim != 1 or (values.size and (values.min() < 0 or values.max() > 32767)):
                raise ValueError(f"predictions {kind}: expected 1-D class indices in 0..32767")
            member = stdio.BytesIO()
            np.lib.format.write_array(member, values.astype(DTYPE), allow_pickle=False)
            info = zipfile.ZipInfo(f"{kind}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    return buf.getvalue()


def read(
    path: str | Path,
    lengths: dict[str, int],
    kinds: tuple[str, ...] | None = None,
    data: bytes | None = None,
) -> dict[str, np.ndarray]:
    """The arrays of `path`, which must hold exactly the kinds in `lengths` (kind -> number of
    images; see `expected`), as int16 arrays of those lengths (read-only); only those of `kinds`
    when given (the others are listed, not read). `data`: the file's bytes, when the caller has
    read them already (to check their digest). Reading a member checks its CRC: a file cut
    short or damaged raises PredictionsError naming it."""
    path = Path(path)
    try:
        # From bytes: zipfile leaves the file open when the archive is unreadable.
        data = path.read_bytes() if data is None else data
        with zipfile.ZipFile(stdio.BytesIO(data)) as archive:
            held = sorted(n.removesuffix(".npy") for n in archive.namelist())
            if held != sorted(lengths):
                raise PredictionsError(
                    f"{path}: holds {', '.join(held) or 'nothing'}; expected "
                    f"{', '.join(sorted(lengths))}"
                )
            arrays = {
                k: _array(archive.read(f"{k}.npy"), lengths[k])
                for k in lengths
                if kinds is None or k in kinds
            }
    except FileNotFoundError:
        raise PredictionsError(f"{path}: file not found") from None
    except PredictionsError:
        raise
    except (
        OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error,
        NotImplementedError,  # a member compressed with a method zipfile cannot read
    ) as e:  # fmt: skip
        raise PredictionsError(f"{path}: unreadable, damaged or cut short ({e})") from None
    for kind, values in arrays.items():
        if values.dtype != DTYPE or values.shape != (lengths[kind],):
            raise PredictionsError(
                f"{path}: {kind} is {values.dtype} {values.shape}; expected int16 "
                f"({lengths[kind]},)"
            )
    return arrays


def _array(member: bytes, length: int) -> np.ndarray:
    """One member's array (an .npy file's bytes). The report reads tens of thousands: one that
    starts with the header `to_bytes` writes for `length` values is taken as it is, without
    parsing the header (np.load's `literal_eval` of it was half of its time); any other is
    parsed, so that what it holds can be named."""
    header = _header(length)
    if member.startswith(header) and len(member) == len(header) + length * DTYPE.itemsize:
        return np.frombuffer(member, DTYPE, offset=len(header))
    return np.lib.format.read_array(stdio.BytesIO(member), allow_pickle=False)


@functools.lru_cache(maxsize=8)
def _header(length: int) -> bytes:
    """The .npy header np.lib.format.write_array writes before `length` int16 values."""
    buf = stdio.BytesIO()
    np.lib.format.write_array(buf, np.zeros(length, DTYPE))
    return buf.getvalue()[: buf.tell() - length * DTYPE.itemsize]
