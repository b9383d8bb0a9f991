"""Archives that would fill the disk are refused before anything is written: real bombs, a zip
header that lies about its size, limits from the environment, and the `ladder download` CLI."""

from __future__ import annotations

import io as stdio
import shutil
import struct
import subprocess
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest
from conftest import BIN, md5
from ladder import io
from ladder.data import archive
from ladder.data.download import download

BOMB = 20 * 10**6  # zeros: deflate and gzip pack them about 1000:1


@pytest.fixture(autouse=True)
def _default_limits(monkeypatch):
    """The defaults, whatever the environment running the tests sets."""
    monkeypatch.delenv("LADDER_ARCHIVE_MAX_GB", raising=False)
    monkeypatch.delenv("LADDER_ARCHIVE_MAX_RATIO", raising=False)


def _zip_bomb(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/cat/ok.txt", b"fine")
        zf.writestr("data/cat/zeros.bin", bytes(BOMB))
    return path


def _tar_bomb(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        member = tarfile.TarInfo("data/cat/zeros.bin")
        member.size = BOMB
        tf.addfile(member, stdio.BytesIO(bytes(BOMB)))
    return path


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.mark.parametrize(("make", "name"), [(_zip_bomb, "bomb.zip"), (_tar_bomb, "bomb.tar.gz")])
def test_a_bomb_is_refused_before_anything_is_written(tmp_path, make, name):
    bomb = make(tmp_path / name)
    ratio = BOMB / bomb.stat().st_size
    assert ratio > 500, "the test archive is no bomb"
    with pytest.raises(
        archive.ArchiveTooLargeError,
        match=rf"^{bomb}: .* compression ratio of \d+:1 .*nothing was extracted\. "
        r".*raise LADDER_ARCHIVE_MAX_RATIO \(now 100\)",
    ):
        archive.extract(bomb, tmp_path / "target")
    assert _files(tmp_path / "target") == []
    # as a folder dataset: the error names the key and the user's file; nothing at the final path
    with pytest.raises(archive.ArchiveTooLargeError, match=rf"^dataset.path = {bomb}: "):
        download({"source": "folder", "path": str(bomb), "test_path": ""}, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_a_tar_bomb_is_refused_from_its_first_header(tmp_path):
    # Cut the stream after the bomb's header: reading every header first (tarfile's
    # getmembers) would decompress the whole bomb and then fail on the cut instead.
    bomb = _tar_bomb(tmp_path / "bomb.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(bomb.read_bytes()[: bomb.stat().st_size // 2])
    with pytest.raises(archive.ArchiveTooLargeError, match="compression ratio"):
        archive.extract(cut, tmp_path / "target")


def test_a_bomb_download_names_the_url(tmp_path, server):
    bomb = _zip_bomb(server.root / "bomb.zip")
    with pytest.raises(archive.ArchiveTooLargeError, match=rf"^{server.url('bomb.zip')}: "):
        download(
            {"source": "tinyimagenet", "url": server.url("bomb.zip"), "md5": md5(bomb)},
            tmp_path / "raw",
        )
    assert not (tmp_path / "raw").exists()


def _lying_zip(path: Path, size: int, fix_crc: bool) -> Path:
    """A member of BOMB zeros whose headers (local and central) say it holds `size` bytes;
    with `fix_crc`, the CRC of those first `size` bytes, so no check can tell."""
    buf = stdio.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/cat/zeros.bin", bytes(BOMB))
    raw = bytearray(buf.getvalue())
    local, central = raw.find(b"PK\x03\x04"), raw.find(b"PK\x01\x02")
    struct.pack_into("<I", raw, local + 22, size)  # uncompressed size
    struct.pack_into("<I", raw, central + 24, size)
    if fix_crc:
        crc = zlib.crc32(bytes(size))
        struct.pack_into("<I", raw, local + 14, crc)
        struct.pack_into("<I", raw, central + 16, crc)
    path.write_bytes(bytes(raw))
    return path


def test_a_zip_header_that_lies_about_its_size_writes_no_more_than_it_says(tmp_path):
    # The headers say 1 kB, under every limit; the data inflates to BOMB bytes. zipfile cuts the
    # member at 1 kB, so its CRC check fails and nothing is written...
    liar = _lying_zip(tmp_path / "liar.zip", 1000, fix_crc=False)
    with pytest.raises(archive.ArchiveError, match=rf"^{liar}: member 'data/cat/zeros.bin' is "):
        archive.extract(liar, tmp_path / "target")
    assert _files(tmp_path / "target") == []
    # ... and a CRC that matches the cut data still writes only the 1 kB the header says.
    liar = _lying_zip(tmp_path / "liar2.zip", 1000, fix_crc=True)
    archive.extract(liar, tmp_path / "target2")
    assert [p.stat().st_size for p in _files(tmp_path / "target2")] == [1000]


def test_the_size_limit_comes_from_the_environment(tmp_path, tin_zip, monkeypatch):
    total = sum(i.file_size for i in zipfile.ZipFile(tin_zip).infolist())  # about 43 kB
    monkeypatch.setenv("LADDER_ARCHIVE_MAX_GB", str(total / 2 / 10**9))
    with pytest.raises(
        archive.ArchiveTooLargeError,
        match=rf"^{tin_zip}: extracts to [\d.]+ kB or more, over the limit of [\d.]+ kB; "
        r"nothing was extracted\. .*raise LADDER_ARCHIVE_MAX_GB \(now 2\.\d+e-05\)",
    ):
        archive.extract(tin_zip, tmp_path / "target")
    assert _files(tmp_path / "target") == []
    monkeypatch.setenv("LADDER_ARCHIVE_MAX_GB", str(total / 10**9))  # exactly enough
    archive.extract(tin_zip, tmp_path / "target")
    assert (tmp_path / "target" / "tiny-imagenet-200" / "wnids.txt").exists()


def test_an_archive_larger_than_the_free_space_is_refused(tmp_path, tin_zip, monkeypatch):
    free = 50 * 10**6  # under the 100 MB margin left free
    usage = shutil.disk_usage(tmp_path)._replace(free=free)
    monkeypatch.setattr(archive.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(
        archive.ArchiveTooLargeError,
        match=rf"^{tin_zip}: .* but only 50.0 MB is free there; nothing was extracted",
    ):
        archive.extract(tin_zip, tmp_path / "target")
    assert _files(tmp_path / "target") == []


def test_the_tiny_imagenet_layout_is_far_below_the_default_limits(tin_zip):
    total = sum(i.file_size for i in zipfile.ZipFile(tin_zip).infolist())
    limits = archive.limits_from_env()
    assert total / tin_zip.stat().st_size < 1  # JPEGs: no smaller packed
    assert (limits.max_bytes, limits.max_ratio) == (50e9, 100)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("LADDER_ARCHIVE_MAX_GB", "lots"),
        ("LADDER_ARCHIVE_MAX_GB", "0"),
        ("LADDER_ARCHIVE_MAX_RATIO", "-5"),
        ("LADDER_ARCHIVE_MAX_RATIO", "nan"),
    ],
)
def test_a_bad_limit_names_the_variable_before_downloading(
    tmp_path, server, monkeypatch, var, value
):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=rf"^{var}='{value}': not a positive number"):
        download(
            {"source": "tinyimagenet", "url": server.url("t.zip"), "md5": "0" * 32},
            tmp_path / "raw",
        )
    assert server.requests == []  # before a long download, not after it
    assert not (tmp_path / "raw").exists()


def test_ladder_download_refuses_a_bomb_without_a_traceback(tmp_path):
    bomb = _zip_bomb(tmp_path / "bomb.zip")
    settings = tmp_path / "download.json"
    io.write_record(settings, {"source": "folder", "path": str(bomb), "test_path": ""})
    out = tmp_path / "results" / "raw"
    proc = subprocess.run(
        [str(BIN / "ladder"), "download", "--settings", str(settings), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"ArchiveTooLargeError: dataset.path = {bomb}: " in proc.stderr
    assert "LADDER_ARCHIVE_MAX_RATIO" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(out.parent.iterdir()) == []  # no raw folder, no temporary one
