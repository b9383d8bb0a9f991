"""`ladder download`: bring a dataset's raw files into results/data/raw/ (layouts: sources.py).

The folder is built under a temporary name and renamed into place at the end, with its manifest
(ladder.manifest), so a failed download, a checksum mismatch or a rejected archive leaves nothing
at the final path, and what `prepare` depends on changes exactly when the raw files do.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pooch
import requests
from PIL import Image

from ladder import manifest, provenance, store
from ladder.data import archive, sources_on_disk
from ladder.data.registry import SOURCES

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """The archive could not be fetched or does not match its checksum."""


def download(settings: dict, out: str | Path, retries: int = 3) -> None:
    """Materialise the raw dataset described by `settings` (results/configs/download.json)."""
    source = settings["source"]
    if source not in SOURCES:
        raise ValueError(f"dataset.source: unknown source {source!r}")
    # The folders' listings before the copy: one that changes meanwhile is imported again.
    made_with = {**provenance.made_with(), **sources_on_disk.listings(settings)}
    if store.restore("download", made_with, out):
        return
    with manifest.folder(out, made_with=made_with) as tmp:
        SOURCES[source].downloader()(settings, tmp, retries)
    store.keep("download", made_with, out)
    log.info("raw %s dataset ready in %s", source, out)


# ----------------------------------------------------------------------------------------------
# One function per source (ladder.data.registry names them): (settings, folder, retries).


def download_tinyimagenet(settings: dict, folder: Path, retries: int) -> None:
    limits = archive.limits_from_env()  # a bad LADDER_ARCHIVE_* fails before a 237 MB download
    path = fetch(settings["url"], settings["md5"], folder, retries=retries)
    log.info("extracting %s", path.name)
    archive.extract(path, folder, source=settings["url"], limits=limits)


def download_folder(settings: dict, folder: Path, retries: int) -> None:
    _import_folder(Path(settings["path"]), folder / "train", "dataset.path")
    if settings["test_path"]:
        _import_folder(Path(settings["test_path"]), folder / "test", "dataset.test_path")


def download_digits(settings: dict, folder: Path, retries: int) -> None:
    write_digits(folder / "train")


# ----------------------------------------------------------------------------------------------
# Helpers


def fetch(url: str, md5: str, folder: Path, retries: int = 3) -> Path:
    """Stream `url` into `folder` with a progress bar, retrying dropped connections, then check
    its md5 once: a wrong checksum is not retried (a Tiny ImageNet download is 237 MB)."""
    path = folder / (Path(urlparse(url).path).name or "archive")
    partial = path.with_name(f".{path.name}.part")
    downloader = pooch.HTTPDownloader(progressbar=True, timeout=60)
    for attempt in range(1, retries + 2):
        try:
            downloader(url, str(partial), None)
            break
        except requests.RequestException as e:
            if attempt > retries:
                raise DownloadError(
                    f"{url}: download failed after {attempt} attempt(s): {e}"
                ) from None
            log.warning("%s: attempt %d failed (%s); retrying", url, attempt, e)
    got = pooch.file_hash(str(partial), alg="md5")
    if got != md5:
        raise DownloadError(
            f"{url}: the download's md5 is {got}, not dataset.md5 = {md5}: check both in "
            "params.yaml (the file was downloaded once and not kept)"
        )
    partial.rename(path)
    return path


def _import_folder(src: Path, dst: Path, key: str) -> None:
    """Copy a <class>/<image> tree (or safely extract an archive of one) to `dst`."""
    if not src.exists():
        raise FileNotFoundError(f"{key} = {src}: no such file or folder")
    if src.is_dir():
        # A copy, not links: DVC makes the files it caches read-only, which must not reach the
        # user's own image folder.
        shutil.copytree(src, dst)
    elif archive.is_archive(src):
        archive.extract(src, dst, source=f"{key} = {src}")
    else:
        raise ValueError(f"{key} = {src}: neither a folder nor a .zip/.tar archive")
    # An archive of one top-level folder that holds the class folders: use that folder.
    entries = [p for p in dst.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and all(p.is_dir() for p in entries[0].iterdir()):
        inner = entries[0].rename(dst.with_name(dst.name + ".inner"))
        shutil.rmtree(dst)
        inner.rename(dst)


def write_digits(dst: Path) -> None:
    """scikit-learn's bundled digits (1,797 real 8x8 scans, 10 classes) as <digit>/<n>.png files."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 grey levels -> 0..255
    for n, (image, label) in enumerate(zip(pixels, digits.target, strict=True)):
        folder = dst / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{n:04d}.png")
