"""ladder.snakefile's plan-time checks on a bare folder, without running Snakemake: which
missing outputs force their jobs."""

from __future__ import annotations

import pytest
from ladder import config, snakefile

PARAMS = {
    "dataset": {"source": "digits"},
    "experiments": {
        "a": {
            "model": {"name": "mynet", "blocks": 1, "width": 4},
            "augment": {"hflip": 0.0},
            "optimizer": {"lr": 0.05},
            "batch_size": 16,
            "epochs": 1,
        },
        "b": {"base": "a", "seed": 1},
    },
}
DATA = [
    "results/data/raw.manifest.json",
    "results/data/prepared.manifest.json",
    "results/data/stats.json",
]


def test_a_missing_output_forces_its_job_when_a_job_after_it_has_results(tmp_path):
    """Missing with nothing after it: not made yet, nothing forced. Missing while a job that
    reads it (directly or through others) has results: forced, and only those jobs."""
    params = config.Params.from_dict(PARAMS, source="test")
    assert snakefile.damaged_outputs(params, tmp_path) == {}

    def made(path: str) -> None:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()

    made("results/experiments/b/eval.manifest.json")  # b evaluated, its training gone
    expected = [*DATA, "results/experiments/b/config.json"]
    assert sorted(snakefile.damaged_outputs(params, tmp_path)) == sorted(expected)

    (tmp_path / "results/experiments/b/eval.manifest.json").unlink()
    made("results/report/index.html")  # through the evaluations, every job before the report
    expected = DATA + [
        f"results/experiments/{exp}/{name}"
        for exp in ("a", "b")
        for name in ("config.json", "eval.manifest.json")
    ]
    assert sorted(snakefile.damaged_outputs(params, tmp_path)) == sorted(expected)


def _never(output: str) -> None:
    raise AssertionError(f"forced {output}")


def test_a_job_through_a_bucket_writes_the_settings_it_reads(tmp_path):
    """With a default storage provider a job may run where the main process's files are not
    (a Kubernetes pod): its own Snakemake process writes the settings files it reads (from the
    same params.yaml, so the same bytes). Without one, a job's process writes nothing there."""
    params = config.Params.from_dict(PARAMS, source="test")
    snakefile.load(params, "job", force=_never, root=tmp_path)
    assert not (tmp_path / "results").exists()

    snakefile.load(params, "job", force=_never, root=tmp_path, storage=True)
    configs = tmp_path / "results/configs"
    written = {p.relative_to(configs).as_posix() for p in configs.rglob("*") if p.is_file()}
    assert written == set(params.settings_files())


def test_touch_is_refused_where_the_results_are_in_a_bucket(tmp_path):
    """--touch vouches for results after checks that read results/; through a bucket they are
    not there, so it is refused before anything is written."""
    params = config.Params.from_dict(PARAMS, source="test")
    with pytest.raises(RuntimeError, match="--touch with a default storage provider"):
        snakefile.load(params, "touch", force=_never, root=tmp_path, storage=True)
    assert not (tmp_path / "results/configs").exists()
