"""Atomic outputs are durable: what is renamed into place was on disk before the rename, and the
rename itself after it (a power cut leaves either the old file or the whole new one). The real
fsync and syncfs calls run; the test only records their order against the renames."""

from __future__ import annotations

import os
from pathlib import Path

from ladder import io


def recording(monkeypatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    fsync, replace = os.fsync, Path.replace

    def fsync_recorded(fd: int) -> None:
        calls.append(("fsync", str(Path(f"/proc/self/fd/{fd}").readlink())))
        fsync(fd)

    def replace_recorded(self: Path, target) -> Path:
        calls.append(("rename", str(Path(target).resolve())))
        return replace(self, target)

    tree = io._sync_tree

    def tree_recorded(path: Path) -> None:
        calls.append(("sync tree", str(path.resolve())))
        tree(path)

    monkeypatch.setattr(os, "fsync", fsync_recorded)
    monkeypatch.setattr(Path, "replace", replace_recorded)
    monkeypatch.setattr(io, "_sync_tree", tree_recorded)
    return calls


def test_a_file_is_on_disk_before_its_rename_and_the_rename_after(tmp_path, monkeypatch):
    calls = recording(monkeypatch)
    target = tmp_path / "out.json"
    io.write_json(target, {"a": 1})
    assert [kind for kind, _ in calls] == ["fsync", "rename", "fsync"], calls
    written, renamed, folder = (path for _, path in calls)
    assert Path(written).parent == tmp_path.resolve()
    assert written != str(target.resolve())  # the temporary name
    assert renamed == str(target.resolve())
    assert folder == str(tmp_path.resolve())


def test_a_folder_is_on_disk_before_its_rename_and_the_rename_after(tmp_path, monkeypatch):
    calls = recording(monkeypatch)
    target = tmp_path / "folder"
    with io.atomic_dir(target) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.bin").write_bytes(b"x" * 100)
    assert [kind for kind, _ in calls] == ["sync tree", "rename", "fsync"], calls
    assert calls[1][1] == str(target.resolve())
    assert calls[2][1] == str(tmp_path.resolve())
    assert (target / "sub" / "a.bin").read_bytes() == b"x" * 100


def test_without_syncfs_every_file_of_a_folder_is_synced(tmp_path, monkeypatch):
    # Where libc has no syncfs (not Linux), one fsync per file.
    class NoSyncfs:
        def __init__(self, *args, **kwargs):
            pass

    monkeypatch.setattr(io.ctypes, "CDLL", NoSyncfs)
    calls = recording(monkeypatch)
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    for name in ("a", "sub/b"):
        (folder / name).write_text(name)
    io._sync_tree(folder)
    synced = {path for kind, path in calls if kind == "fsync"}
    assert synced == {str((folder / "a").resolve()), str((folder / "sub" / "b").resolve())}
