"""download -> prepare -> stats: real archives, a real HTTP server, real failures."""

from __future__ import annotations

import io as stdio
import json
import os
import signal
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import Deadline, Project, md5, tiny_params
from ladder.data import archive, prepare, stats
from ladder.data.download import DownloadError, download
from PIL import Image

# ----------------------------------------------------------------------------------------------
# The chain through Snakemake, against a Tiny ImageNet layout served over HTTP


def test_tinyimagenet_chain_through_snakemake(tmp_path, tin_zip, server):
    (server.root / tin_zip.name).write_bytes(tin_zip.read_bytes())
    params = tiny_params()
    params["dataset"] = {
        "source": "tinyimagenet",
        "url": server.url(tin_zip.name),
        "md5": md5(tin_zip),
        "val_fraction": 0.2,
        "split_seed": 3,
        "image_size": 16,
    }
    project = Project(tmp_path / "p", params)
    project.snakemake("results/data/stats.json")

    prepared = project.path("results/data/prepared")
    x = {s: np.load(prepared / f"{s}_x.npy", mmap_mode="r") for s in ("train", "val", "test")}
    y = {s: np.load(prepared / f"{s}_y.npy") for s in ("train", "val", "test")}
    # 4 classes x 10 train images -> 32 train / 8 val, stratified: 8 / 2 per class
    assert {s: a.shape for s, a in x.items()} == {
        "train": (32, 16, 16, 3),
        "val": (8, 16, 16, 3),
        "test": (12, 16, 16, 3),
    }
    assert all(a.dtype == np.uint8 for a in x.values())
    assert np.bincount(y["train"]).tolist() == [8] * 4
    assert np.bincount(y["val"]).tolist() == [2] * 4
    assert np.bincount(y["test"]).tolist() == [3] * 4  # from val_annotations.txt
    classes = json.loads((prepared / "classes.json").read_text())
    assert [c["id"] for c in classes] == sorted(c["id"] for c in classes)  # wnids sorted
    assert classes[0]["name"] == "thing 0"
    assert classes[0]["words"] == "thing 0, other name"
    # the test split is the official val split, in file-name order, labelled by the annotations
    annotations = {}
    for line in (
        (project.path("results/data/raw/tiny-imagenet-200/val/val_annotations.txt"))
        .read_text()
        .splitlines()
    ):
        name, wnid = line.split("\t")[:2]
        annotations[name] = wnid
    names = sorted(annotations)
    assert [classes[i]["id"] for i in y["test"]] == [annotations[n] for n in names]
    # grayscale JPEGs became RGB with three equal channels
    first = x["test"][0]
    assert np.array_equal(first[..., 0], first[..., 1])
    # stats: train split only, [0,1] units, equal to a float64 numpy reference
    got = json.loads(project.path("results/data/stats.json").read_text())
    ref = np.asarray(x["train"], dtype=np.float64) / 255
    assert np.allclose(got["mean"], ref.mean(axis=(0, 1, 2)), atol=1e-12)
    assert np.allclose(got["std"], ref.std(axis=(0, 1, 2)), atol=1e-12)
    assert "duplicates" in project.path("logs/prepare.log").read_text()


def test_split_is_deterministic_and_follows_split_seed(tmp_path):
    raw = tmp_path / "raw"
    download({"source": "digits"}, raw)
    settings = {
        "source": "digits",
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "split_seed": 0,
        "image_size": 8,
    }
    prepare.prepare(raw, tmp_path / "a", settings, workers=2)
    prepare.prepare(raw, tmp_path / "b", settings, workers=1)
    prepare.prepare(raw, tmp_path / "c", {**settings, "split_seed": 1}, workers=2)
    for f in ("train_x.npy", "val_y.npy", "test_x.npy"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    # stratified: same labels per class, but other images
    assert not np.array_equal(
        np.load(tmp_path / "a" / "val_x.npy"), np.load(tmp_path / "c" / "val_x.npy")
    )
    sizes = {s: len(np.load(tmp_path / "a" / f"{s}_y.npy")) for s in ("train", "val", "test")}
    assert sizes == {"train": 1149, "val": 288, "test": 360}  # sklearn's 1,797 digits


def test_duplicates_across_splits_are_counted():
    a, b = b"x" * 16, b"y" * 16
    digests = {"train": np.array([a, b, a]), "val": np.array([b]), "test": np.array([b"z" * 16])}
    counts = prepare.duplicates(digests)
    assert counts["within_train"] == 1
    assert counts["train_val"] == 1
    assert counts["train_test"] == 0


# ----------------------------------------------------------------------------------------------
# Failures: each is a clear error and leaves nothing at the final path


def test_md5_mismatch_is_an_error_and_leaves_nothing(tmp_path, tin_zip, server):
    (server.root / "t.zip").write_bytes(tin_zip.read_bytes())
    out = tmp_path / "raw"
    with pytest.raises(DownloadError, match=rf"t.zip: the download's md5 is {md5(tin_zip)}, not "
                       r"dataset.md5 = 0{32}"):  # fmt: skip
        download(
            {"source": "tinyimagenet", "url": server.url("t.zip"), "md5": "0" * 32}, out, retries=3
        )
    assert server.requests == ["/t.zip"]  # a wrong checksum is not downloaded again
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]  # no temporary folder left either


def test_dropped_connection_is_retried(tmp_path, tin_zip, server):
    (server.root / "t.zip").write_bytes(tin_zip.read_bytes())
    server.drop_first = 1
    out = tmp_path / "raw"
    download(
        {"source": "tinyimagenet", "url": server.url("t.zip"), "md5": md5(tin_zip)}, out, retries=2
    )
    assert server.requests == ["/t.zip", "/t.zip"]
    assert (out / "t.zip").read_bytes() == tin_zip.read_bytes()
    assert (out / "tiny-imagenet-200" / "wnids.txt").exists()


def test_unreachable_server_fails_clearly(tmp_path):
    with pytest.raises(DownloadError, match=r"127.0.0.1:9/x.zip: download failed after 1 attempt"):
        download(
            {"source": "tinyimagenet", "url": "http://127.0.0.1:9/x.zip", "md5": "0" * 32},
            tmp_path / "r",
            retries=0,
        )
    assert not (tmp_path / "r").exists()


def _zip_with(path: Path, name: str, symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data/cat/ok.png", b"fine")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd" if symlink else "evil")
    return path


def _tar_with(path: Path, kind: str) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("data/cat/link.png")
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
        elif kind == "device":
            info.type = tarfile.CHRTYPE
        tf.addfile(info)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _zip_with(p / "a.zip", "../escape.png"), "would land outside"),
        (lambda p: _zip_with(p / "a.zip", "data/../../escape.png"), "would land outside"),
        (lambda p: _zip_with(p / "a.zip", "/etc/evil.png"), "absolute path"),
        (
            lambda p: _zip_with(p / "a.zip", "data/cat/link.png", symlink=True),
            "link or special file",
        ),
        (lambda p: _tar_with(p / "a.tar.gz", "symlink"), "is a link"),
        (lambda p: _tar_with(p / "a.tar.gz", "hardlink"), "is a link"),
        (lambda p: _tar_with(p / "a.tar.gz", "device"), "device or special file"),
    ],
)
def test_unsafe_archive_members_are_rejected_before_anything_is_written(tmp_path, make, message):
    bad = make(tmp_path)
    with pytest.raises(archive.UnsafeArchiveError, match=message):
        archive.extract(bad, tmp_path / "target")
    assert not any((tmp_path / "target").iterdir())
    assert not (tmp_path / "escape.png").exists()
    # the same archive as a folder dataset: an error that names the key and the file the user
    # gave (not a temporary copy), nothing at the final path
    with pytest.raises(archive.UnsafeArchiveError, match=rf"^dataset.path = {bad}: member "):
        download({"source": "folder", "path": str(bad), "test_path": ""}, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_a_refused_download_names_the_url(tmp_path, server):
    bad = _zip_with(server.root / "bad.zip", "../escape.png")
    with pytest.raises(archive.UnsafeArchiveError, match=rf"^{server.url('bad.zip')}: member "):
        download(
            {"source": "tinyimagenet", "url": server.url("bad.zip"), "md5": md5(bad)},
            tmp_path / "raw",
        )
    assert not (tmp_path / "raw").exists()


def test_truncated_archive_is_a_clear_error(tmp_path, tin_zip):
    for suffix, data in ((".zip", tin_zip.read_bytes()), (".tar.gz", _targz_of(tin_zip))):
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(archive.ArchiveError, match=rf"{cut.name}: .*(truncated|corrupt)"):
            archive.extract(cut, tmp_path / f"out{suffix}")
        with pytest.raises(archive.ArchiveError):
            download({"source": "folder", "path": str(cut), "test_path": ""}, tmp_path / "raw")
        assert not (tmp_path / "raw").exists()


def _targz_of(zip_path: Path) -> bytes:
    buf = stdio.BytesIO()
    with zipfile.ZipFile(zip_path) as zf, tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info in zf.infolist():
            data = zf.read(info)
            member = tarfile.TarInfo(info.filename)
            member.size = len(data)
            tf.addfile(member, stdio.BytesIO(data))
    return buf.getvalue()


def _image_folder(root: Path, classes=("cat", "dog"), per_class=6, size=12, seed=1) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png"
            )
    return root


def test_corrupt_jpeg_names_the_file_and_leaves_nothing(tmp_path):
    folder = _image_folder(tmp_path / "imgs")
    good = stdio.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(good, format="JPEG")
    (folder / "dog" / "bad.jpg").write_bytes(good.getvalue()[:200])  # truncated JPEG
    raw = tmp_path / "raw"
    download({"source": "folder", "path": str(folder), "test_path": ""}, raw)
    settings = {
        "source": "folder",
        "val_fraction": 0.25,
        "test_fraction": 0.25,
        "split_seed": 0,
        "image_size": 8,
    }
    with pytest.raises(prepare.ImageDecodeError, match=r"bad\.jpg: cannot decode image"):
        prepare.prepare(raw, tmp_path / "prepared", settings, workers=2)
    assert not (tmp_path / "prepared").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_folder_source_with_separate_test_set_and_archive(tmp_path):
    train = _image_folder(tmp_path / "train_imgs", per_class=8)
    test = _image_folder(tmp_path / "test_imgs", per_class=3, seed=2)
    with tarfile.open(tmp_path / "train.tar.gz", "w:gz") as tf:  # one top-level folder, as usual
        tf.add(train, arcname="mydata")
    raw = tmp_path / "raw"
    download(
        {"source": "folder", "path": str(tmp_path / "train.tar.gz"), "test_path": str(test)}, raw
    )
    settings = {"source": "folder", "val_fraction": 0.25, "split_seed": 0, "image_size": 8}
    summary = prepare.prepare(raw, tmp_path / "prepared", settings, workers=1)
    assert summary["images"] == {"train": 12, "val": 4, "test": 6}
    assert summary["duplicates"]["train_test"] == 0


def test_a_class_with_a_single_image_cannot_be_split(tmp_path):
    folder = _image_folder(tmp_path / "imgs", per_class=5)
    for p in sorted((folder / "dog").iterdir())[1:]:
        p.unlink()
    download({"source": "folder", "path": str(folder), "test_path": ""}, tmp_path / "raw")
    settings = {
        "source": "folder",
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "split_seed": 0,
        "image_size": 8,
    }
    with pytest.raises(
        ValueError, match=r"dataset.test_fraction = 0.2: class 1 has a single image"
    ):
        prepare.prepare(tmp_path / "raw", tmp_path / "prepared", settings, workers=1)


def test_stats_streams_exactly(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5000, 4, 4, 3), dtype=np.uint8)  # more than one chunk
    np.save(tmp_path / "x.npy", x)
    got = stats.compute(tmp_path / "x.npy")
    ref = x.astype(np.float64) / 255
    assert np.allclose(got["mean"], ref.mean(axis=(0, 1, 2)), rtol=0, atol=1e-13)
    assert np.allclose(got["std"], ref.std(axis=(0, 1, 2)), rtol=0, atol=1e-13)


# ----------------------------------------------------------------------------------------------
# Killing Snakemake during prepare, then --rerun-incomplete


def _big_folder(root: Path, classes: int = 4, per_class: int = 900, size: int = 160) -> Path:
    """Enough large PNGs that decoding takes a few seconds: time to kill the job mid-way."""
    rng = np.random.default_rng(2)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.roll(base, i + 7 * c, axis=1)).save(
                root / f"c{c}" / f"{i}.png", compress_level=0
            )
    return root


@pytest.mark.slow
def test_killed_prepare_reruns_to_identical_arrays(tmp_path):
    folder = _big_folder(tmp_path / "imgs")
    params = tiny_params()
    params["dataset"] = {"source": "folder", "path": str(folder), "image_size": 16}
    clean = Project(tmp_path / "clean", params)
    clean.snakemake(*_prepared_targets())

    killed = Project(tmp_path / "killed", params)
    proc = subprocess.Popen(
        ["snakemake", "--cores", "2", *_prepared_targets()],
        cwd=killed.root,
        env=killed.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = Deadline("prepare starting", expected=10)
        while not list(killed.path("results/data").glob(".prepared.*.tmp")):
            assert proc.poll() is None, "snakemake ended before prepare was seen"
            deadline.check()
            time.sleep(0.02)
        time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not killed.path("results/data/prepared.manifest.json").exists(), (
        "killed too late to test anything"
    )

    killed.snakemake("--unlock")  # a SIGKILL leaves Snakemake's lock behind, as it says
    rerun = killed.snakemake("--rerun-incomplete", *_prepared_targets())
    assert "prepare" in rerun.stdout + rerun.stderr
    for name in _prepared_files():
        assert killed.path(name).read_bytes() == clean.path(name).read_bytes(), name
    assert not list(killed.path("results/data").glob(".*.tmp")), (
        "the killed job's temporaries remain"
    )


def _prepared_targets() -> list[str]:
    return ["results/data/prepared.manifest.json"]


def _prepared_files() -> list[str]:
    arrays = [f"prepared/{s}_{a}.npy" for s in ("train", "val", "test") for a in ("x", "y")]
    return [f"results/data/{f}" for f in [*arrays, "prepared.manifest.json"]]
