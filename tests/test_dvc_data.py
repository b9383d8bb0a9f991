"""The raw data at ImageNet size: DVC tracks its manifest, not its files, and a folder dataset is
imported as links, not copied (README, "Versioning with DVC"; benchmarks/data_in_dvc.py measures
both). So a workspace may lack results/data/raw/ (a clone after `dvc pull`, or disk freed): that
reruns nothing, and a stage that must read it says how to make it again."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import Project, tiny_params
from ladder import stages
from ladder.data import class_folders, prepare
from ladder.data.download import download
from PIL import Image


def _image_folder(root: Path, per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


def _sharing_way(tmp_path: Path) -> str:
    """What this file system gives the import: "reflink" (btrfs, xfs) or "hardlink"."""
    (tmp_path / "probe").write_bytes(b"x")
    sharer = class_folders.FileSharer()
    sharer(str(tmp_path / "probe"), str(tmp_path / "probe2"))
    return next(way for way, n in sharer.used.items() if n)


def test_a_folder_is_imported_as_links_not_copies(tmp_path):
    folder = _image_folder(tmp_path / "imgs")
    raw = tmp_path / "raw"
    download({"source": "folder", "path": str(folder), "test_path": ""}, raw)
    images = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    assert len(images) == 6
    way = _sharing_way(tmp_path)
    for rel in images:
        src, dst = folder / rel, raw / "train" / rel
        assert dst.read_bytes() == src.read_bytes()
        # A hard link is the same file; a reflink shares the blocks, copied on write.
        assert (dst.stat().st_ino == src.stat().st_ino) == (way == "hardlink"), rel


def test_where_a_file_cannot_be_linked_it_is_copied(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for name in "abc":
        (src / name).write_text(name)
    tried = []

    def refuse(self, a, b):
        tried.append(Path(a).name)
        # a: another user's file (fs.protected_hardlinks); then another file system
        raise OSError(errno.EPERM if Path(a).name == "a" else errno.EXDEV, "refused")

    monkeypatch.setattr(
        class_folders.FileSharer, "_reflink", lambda self, a, b: refuse(self, "x", b)
    )
    monkeypatch.setattr(class_folders.FileSharer, "_hardlink", refuse)
    sharer = class_folders.FileSharer()
    (tmp_path / "dst").mkdir()
    for name in "abc":
        sharer(str(src / name), str(tmp_path / "dst" / name))
    assert sharer.used == {"reflink": 0, "hardlink": 0, "copy": 3}
    assert tried == ["x", "a", "b"]  # neither way is tried again once the file system refuses it
    assert {p.name: p.read_text() for p in (tmp_path / "dst").iterdir()} == {n: n for n in "abc"}


def test_prepare_without_the_raw_folder_says_dvc_pull_left_it_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the stages' own relative paths, as the engines run them
    raw = Path(stages.RAW)
    download({"source": "digits"}, raw)
    shutil.rmtree(raw)  # what a clone has after `dvc pull`: the manifest alone
    settings = {"source": "digits", "val_fraction": 0.2, "test_fraction": 0.2, "split_seed": 0,
                "image_size": 8}  # fmt: skip
    with pytest.raises(ValueError, match="folder not found") as refused:
        prepare.prepare(raw, stages.PREPARED, settings, workers=1)
    assert str(refused.value).startswith(
        f"{raw}: folder not found (DVC keeps only {stages.manifest(stages.RAW)}, not the files"
    )
    assert "`dvc repro --force --single-item download`" in str(refused.value)


def test_without_the_raw_folder_snakemake_has_nothing_to_do_until_prepare_must_run(tmp_path):
    project = Project(tmp_path / "p", tiny_params())
    project.snakemake(stages.STATS, expected=30)
    shutil.rmtree(project.path(stages.RAW))  # a clone after `dvc pull`
    plan = project.snakemake(stages.STATS, "-n")
    assert "Nothing to be done" in plan.stdout + plan.stderr, plan.stdout
    # Another image size: prepare must read the raw files, and says how to make them again.
    project.write_params(tiny_params(image_size=8))
    failed = project.snakemake(stages.STATS, check=False, expected=30)
    assert failed.returncode != 0
    log = project.path("logs/prepare.log").read_text()
    assert "results/data/raw: folder not found (DVC keeps only" in log
    command = f"snakemake {stages.manifest(stages.RAW)} --forcerun download --cores 1"
    assert f"`{command}`" in log
    project.snakemake(*command.split()[1:4], expected=30)  # as the message says
    project.snakemake(stages.STATS, expected=30)
    assert project.path(stages.RAW).is_dir()
