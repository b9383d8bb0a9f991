"""The data store (ladder.store) keeps a finished folder as hard links in one atomic folder: the
kept folder's files share the output's inodes, are on disk before the folder is renamed into
place (one sync, not one per file), and a keep or a link back that fails midway leaves no part
of a folder under a finished name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ladder import io, manifest, store

MADE_WITH = {"listing": "abc"}
FILES = [f"train/c{i % 3}/{i:03d}.png" for i in range(12)]


def made(out: Path, tag: bytes = b"") -> Path:
    with manifest.folder(out) as tmp:
        for rel in FILES:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(rel.encode() + tag)
    return out


def recording(monkeypatch) -> list[str]:
    """The fsyncs, tree syncs and renames from here on, in order (the real calls run too)."""
    calls: list[str] = []
    fsync, replace, tree = os.fsync, Path.replace, io._sync_tree

    def fsync_recorded(fd: int) -> None:
        calls.append("fsync")
        fsync(fd)

    def replace_recorded(self: Path, target) -> Path:
        calls.append(f"rename {Path(target).name}")
        return replace(self, target)

    def tree_recorded(path: Path) -> None:
        calls.append("sync tree")
        tree(path)

    monkeypatch.setattr(os, "fsync", fsync_recorded)
    monkeypatch.setattr(Path, "replace", replace_recorded)
    monkeypatch.setattr(io, "_sync_tree", tree_recorded)
    return calls


def kept(root: Path) -> Path:
    return store._entry("download", MADE_WITH, root) / "raw"


def test_a_kept_folder_is_links_synced_once_before_its_rename(tmp_path, monkeypatch):
    out, root = made(tmp_path / "raw"), tmp_path / "cache"
    calls = recording(monkeypatch)
    store.keep("download", MADE_WITH, out, root=root)
    folder = kept(root)
    for rel in FILES:
        assert (folder / rel).samefile(out / rel), rel
    assert manifest.sibling(folder).samefile(manifest.sibling(out))
    # The folder: one sync of the whole tree, its rename, its parent's entries; then the sibling
    # manifest (a file linked atomically: fsync, rename, fsync). No fsync per file.
    assert calls == [
        *("sync tree", "rename raw", "fsync"),
        *("fsync", "rename raw.manifest.json", "fsync"),
    ]
    manifest.verify(folder, track=False)


def failing_after(monkeypatch, n: int) -> None:
    link, done = io.link_new, []

    def link_new(src, dst) -> None:
        if len(done) == n:
            raise OSError(5, "injected fault", str(dst))
        done.append(dst)
        link(src, dst)

    monkeypatch.setattr(io, "link_new", link_new)


def test_a_keep_that_fails_midway_leaves_no_kept_folder(tmp_path, monkeypatch):
    out, root = made(tmp_path / "raw"), tmp_path / "cache"
    failing_after(monkeypatch, len(FILES) // 2)
    with pytest.raises(OSError, match="injected fault"):
        store.keep("download", MADE_WITH, out, root=root)
    entry = kept(root).parent
    assert list(entry.iterdir()) == []  # neither the folder nor a temporary one
    assert not store.restore("download", MADE_WITH, tmp_path / "again" / "raw", root=root)


def test_a_link_back_that_fails_midway_keeps_the_old_output(tmp_path, monkeypatch):
    out, root = made(tmp_path / "raw"), tmp_path / "cache"
    store.keep("download", MADE_WITH, out, root=root)
    other = made(tmp_path / "other" / "raw", tag=b"-other")  # what the output holds now
    failing_after(monkeypatch, len(FILES) // 2)
    with pytest.raises(OSError, match="injected fault"):
        store.restore("download", MADE_WITH, other, root=root)
    assert sorted(p.name for p in other.parent.iterdir()) == ["raw", "raw.manifest.json"]
    manifest.verify(other, track=False)
    assert (other / FILES[0]).read_bytes() == FILES[0].encode() + b"-other"
    monkeypatch.undo()
    assert store.restore("download", MADE_WITH, other, root=root)
    assert (other / FILES[0]).samefile(kept(root) / FILES[0])
