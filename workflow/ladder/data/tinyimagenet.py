"""The tinyimagenet source: the official archive, fetched and checked against its md5, then
extracted; its tree read as train/<wnid>/images/ and val/ with val_annotations.txt (the official
val split, our test split)."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pooch
import requests

from ladder.data import archive
from ladder.data.sources import DownloadError, Labelled, Layout, LayoutError, images_in

log = logging.getLogger(__name__)


def download(settings: dict, folder: Path, retries: int) -> None:
    limits = archive.limits_from_env()  # a bad LADDER_ARCHIVE_* fails before a 237 MB download
    path = fetch(settings["url"], settings["md5"], folder, retries=retries)
    log.info("extracting %s", path.name)
    archive.extract(path, folder, source=settings["url"], limits=limits)


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


def layout(raw: Path) -> Layout:
    """The official archive's tree: train/<wnid>/images/, val/ with val_annotations.txt."""
    roots = sorted(p.parent for p in raw.glob("*/wnids.txt"))
    if not roots:
        raise LayoutError(f"{raw}: no */wnids.txt - not a Tiny ImageNet tree")
    root = roots[0]
    wnids = sorted(
        line.strip() for line in (root / "wnids.txt").read_text().splitlines() if line.strip()
    )
    words = {}
    if (root / "words.txt").exists():
        for line in (root / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.strip()
    classes = [
        {
            "index": i,
            "id": w,
            "name": words.get(w, w).split(",")[0].strip(),
            "words": words.get(w, w),
        }
        for i, w in enumerate(wnids)
    ]
    index = {w: i for i, w in enumerate(wnids)}

    paths, labels = [], []
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        if not folder.is_dir():
            raise LayoutError(f"{folder}: missing training folder for class {wnid}")
        images = images_in(folder)
        if not images:
            raise LayoutError(f"{folder}: no images for class {wnid}")
        paths += images
        labels += [index[wnid]] * len(images)

    annotations = root / "val" / "val_annotations.txt"
    if not annotations.exists():
        raise LayoutError(
            f"{annotations}: missing (labels of the official val split, our test split)"
        )
    test_paths, test_labels = [], []
    for n, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise LayoutError(
                f"{annotations}:{n}: expected '<file>\\t<wnid>' with a known wnid, got {line!r}"
            )
        path = root / "val" / "images" / fields[0]
        if not path.exists():
            raise LayoutError(f"{annotations}:{n}: image {path} is missing")
        test_paths.append(path)
        test_labels.append(index[fields[1]])
    order = np.argsort([p.name for p in test_paths], kind="stable")
    return Layout(
        classes,
        Labelled(paths, np.asarray(labels, dtype=np.int64)),
        Labelled([test_paths[i] for i in order], np.asarray(test_labels, dtype=np.int64)[order]),
    )
