"""Opt-in: the real Tiny ImageNet sample in ../shared/data, when this checkout sits beside it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO, Project, md5, tiny_params

SAMPLE = REPO.parent / "shared" / "data" / "tiny-imagenet-200-sample.zip"

pytestmark = pytest.mark.skipif(not SAMPLE.exists(), reason=f"opt-in: {SAMPLE} is not here")


def test_the_real_sample_prepares_200_classes(tmp_path, server):
    (server.root / SAMPLE.name).write_bytes(SAMPLE.read_bytes())
    params = tiny_params()
    params["dataset"] = {
        "source": "tinyimagenet",
        "url": server.url(SAMPLE.name),
        "md5": md5(SAMPLE),
    }
    project = Project(tmp_path / "p", params)
    project.snakemake("results/data/stats.json")
    prepared = project.path("results/data/prepared")
    sizes = {
        s: np.load(prepared / f"{s}_x.npy", mmap_mode="r").shape for s in ("train", "val", "test")
    }
    assert sizes == {"train": (1600, 64, 64, 3), "val": (400, 64, 64, 3), "test": (600, 64, 64, 3)}
    for split in ("train", "val", "test"):
        assert len(np.unique(np.load(prepared / f"{split}_y.npy"))) == 200
    classes = json.loads((prepared / "classes.json").read_text())
    assert classes[0] == {
        "id": "n01443537",
        "index": 0,
        "name": "goldfish",
        "words": "goldfish, Carassius auratus",
    }
