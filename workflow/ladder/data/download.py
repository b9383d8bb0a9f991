"""`ladder download`: bring a dataset's raw files into results/data/raw/ (each source's module,
named by ladder.data.registry, fetches and reads its own).

The folder is built under a temporary name and renamed into place at the end, with its manifest
(ladder.manifest), so a failed download, a checksum mismatch or a rejected archive leaves nothing
at the final path, and what `prepare` depends on changes exactly when the raw files do.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ladder import manifest, provenance, store
from ladder.data import sources_on_disk
from ladder.data.registry import SOURCES
from ladder.data.sources import DownloadError

__all__ = ["DownloadError", "download"]
log = logging.getLogger(__name__)


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
