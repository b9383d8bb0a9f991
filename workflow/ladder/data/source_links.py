"""The links DVC hashes a folder dataset through: results/data/source/{path,test_path} point to
the folders `dataset.path` and `dataset.test_path` name (an empty folder for an unset one)
(ladder.data.sources_on_disk says how each engine sees an edit of their files).

`configure` makes them (so does the Snakefile as it loads); they are its outputs in DVC, which
hashes the folders through them, and it records beside them, in `links.json`, what each names
and the folders' listings (every file's name, size and mtime, as `download` records them). That
record, not the links, is what `download` depends on: with the links as its dependency too, DVC
hashed every folder twice per `dvc status` (65 µs a file instead of 36, measured at 20k files).
So an edit of the dataset changes `configure`'s outputs, `configure` reruns and writes new
listings, and the import reruns; a link removed, or a clone after `dvc pull`, reruns
`configure`, which makes it again, and nothing after it.
A module of its own, apart from ladder.data.sources_on_disk (which `download` runs): editing how
the links are made reruns `configure` only.

Light: the Snakefile imports it.
"""

from __future__ import annotations

from pathlib import Path

from ladder import io
from ladder.data import sources_on_disk

LINKS = "links.json"  # beside the links: what each names, and the folders' listings


def write_links(settings: dict, root: str | Path, listings: dict | None = None) -> None:
    """results/data/source/<key>: a link to the folder `settings[key]` names, or an empty folder
    when it names none, or none that exists (DVC needs a path it can hash either way; the import
    says what is missing); and the record beside them. `listings`: the folders' listings
    (sources_on_disk.listings), where the caller has taken them already."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = {}
    for key in sources_on_disk.KEYS:
        link = root / key
        target = settings.get(key)
        want = Path(target).resolve() if target and Path(target).exists() else None
        names[key] = None if want is None else str(want)
        if want is not None and link.is_symlink() and link.readlink() == want:
            continue
        if want is None and link.is_dir() and not link.is_symlink() and not any(link.iterdir()):
            continue
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            link.rmdir()  # an empty placeholder; never anything else
        if want is None:
            link.mkdir()
        else:
            tmp = root / f".{key}.tmp"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(want)
            tmp.replace(link)
    if listings is None:
        listings = sources_on_disk.listings(settings)
    record = {"links": names, "listings": listings}
    io.write_if_changed(root / LINKS, io.json_text(record))
