"""Handing results between the engines: `ladder dvc-commit`, and Snakemake adopting DVC's runs.

DVC records in dvc.lock what each stage consumed and produced; after a Snakemake run there is no
such record, and `dvc commit` asks for `--force` because it cannot tell whether the files belong
together. This command makes that call with evidence instead of by force of habit: it commits only
when Snakemake itself says every output of the whole ladder is up to date with params.yaml and the
code, and the settings files are exactly params.yaml resolved (not a `--configfile` run's).

The other direction, DVC to Snakemake: both engines write a settings file only when its content
changes, and Snakemake compares small files by content, so most of DVC's work looks current to
Snakemake as it is. Timestamps are the exception: DVC links a cached file back into the
workspace with the time it first entered the cache (an output that came out the same as before
looks older than the inputs it was just made from), and `dvc checkout`/`dvc pull` restore files
in any order. Snakemake trusts timestamps, so as it loads the workflow it calls
`adopt_dvc_results`: where an output looks older than its inputs, it asks DVC whether the stage
is up to date (its recorded inputs and outputs are the ones in the workspace), and if so gives
the outputs the current time. Outputs DVC does not vouch for are left alone, and Snakemake
reruns them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from ladder import config, io, stages, workspace

log = logging.getLogger(__name__)


class NotInSyncError(RuntimeError):
    """The workspace's results do not all belong to params.yaml and the code."""


def _settings_differ(params: config.Params, configs: Path) -> list[str]:
    """Settings files that are missing, extra, or not what params.yaml resolves to."""
    expected = params.settings_files()
    present = {p.relative_to(configs).as_posix() for p in configs.rglob("*.json") if p.is_file()}
    wrong = sorted(present ^ set(expected))
    for rel in sorted(set(expected) & present):
        if (configs / rel).read_text() != io.record_text(expected[rel]):
            wrong.append(rel)
    return wrong


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise NotInSyncError(f"`{name}` not found on PATH: activate the project's .venv first")
    return path


def check_snakemake_done(root: Path, params: config.Params) -> None:
    """Raise unless Snakemake has nothing to do for what DVC builds: the report, and every
    experiment's training and evaluation (DVC builds them all, whatever `run:` selects)."""
    evaluations = [
        stages.manifest(stages.STAGES["evaluate"].outs["eval"].path.replace("{exp}", name))
        for name in params.experiments
    ]
    proc = subprocess.run(
        # The targets first: --quiet takes every word after it.
        [_tool("snakemake"), "report", *evaluations, "--dry-run", "--quiet", "rules"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise NotInSyncError(f"`snakemake --dry-run` failed:\n{proc.stderr[-2000:]}")
    output = proc.stdout + proc.stderr
    if "Nothing to be done" not in output:
        table = output.split("Job stats:")[-1].strip().splitlines()
        raise NotInSyncError(
            "Snakemake still has work to do for what DVC builds (the report, and every "
            "experiment in params.yaml, selected by `run:` or not): run it first "
            f"(`snakemake report {' '.join(evaluations)} --cores 1`). Its plan:\n  "
            + "\n  ".join(table)
        )


def dvc_commit(root: str | Path = ".", params_file: str = stages.PARAMS) -> None:
    """Check that Snakemake's results are complete and current, then `dvc commit` them."""
    root = Path(root)
    workspace.refuse_if_snakemake_running(root)
    params = config.load(root / params_file)
    wrong = _settings_differ(params, root / stages.CONFIGS)
    if wrong:
        raise NotInSyncError(
            f"{root / stages.CONFIGS} does not hold {params_file} resolved ({', '.join(wrong[:5])}"
            f"{', ...' if len(wrong) > 5 else ''}): {params_file} changed since Snakemake last "
            "ran, or Snakemake ran with another config (--configfile). Run "
            "`snakemake report --cores 1` first"
        )
    check_snakemake_done(root, params)
    # What goes into dvc.lock is vouched for: every byte of every finished folder (a file
    # damaged in place keeps its size and timestamp, and neither engine's plan notices it).
    from ladder import snakefile

    everything = dataclasses.replace(params, selected=tuple(params.experiments))
    damaged = snakefile.unverified(everything, root)
    if damaged:
        raise NotInSyncError(
            "results that are not what their manifests record, not recorded in dvc.lock: "
            + "; ".join(damaged.values())
        )
    log.info("Snakemake's results are up to date with %s; recording them in dvc.lock", params_file)
    done = subprocess.run(
        [_tool("dvc"), "commit", "--force"], cwd=root, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise NotInSyncError(f"`dvc commit` failed:\n{(done.stdout + done.stderr)[-2000:]}")


# ----------------------------------------------------------------------------------------------
# DVC -> Snakemake


def _jobs(names, selected) -> list[tuple[str, list[Path], list[Path]]]:
    """(DVC stage name, Snakemake's inputs, Snakemake's outputs) of each named DVC stage, in the
    table's (topological) order."""
    jobs = []
    for stage in stages.STAGES.values():
        for name in names:
            base, _, exp = name.partition("@")
            if base != stage.name or stage.name == "configure":
                continue
            at = (lambda p, exp=exp: p.replace("{exp}", exp)) if exp else (lambda p: p)
            inputs = [at(p) for p in stage.deps.values()] + list(stage.code)
            inputs += [p.replace("{exp}", e) for e in selected for p in stage.each_experiment]
            outputs = [at(p) for p in stage.out_paths]
            jobs.append((name, [Path(p) for p in inputs], [Path(p) for p in outputs]))
    return jobs


def _mtime(path: Path) -> float | None:
    """The time Snakemake sees: a folder's .snakemake_timestamp if it has one."""
    for candidate in (path / ".snakemake_timestamp", path):
        try:
            return candidate.stat().st_mtime
        except (FileNotFoundError, NotADirectoryError):
            continue
    return None


def _looks_outdated(inputs: list[Path], outputs: list[Path]) -> bool:
    out_times = [_mtime(p) for p in outputs]
    if None in out_times:
        return False  # missing outputs: Snakemake runs the job whatever we do
    in_times = [t for t in map(_mtime, inputs) if t is not None]
    return bool(in_times) and max(in_times) > min(out_times)


def _settings_only(changes: list) -> bool:
    """Whether DVC finds a stage changed in its settings files alone: a plan decides about those
    by content itself (ladder.snakefile), and they may hold another params' resolution until a
    run writes them, while the stage's results are still DVC's."""
    settings = f"{stages.CONFIGS}/", stages.CONFIGS
    return all(
        isinstance(change, dict)
        and set(change) == {"changed deps"}
        and all(path.startswith(settings) for path in change["changed deps"])
        for change in changes
    )


def adopt_dvc_results(selected, root: str | Path = ".", dvc_lock_held: bool = False) -> list[str]:
    """Give the outputs of stages DVC vouches for timestamps that say so (see the module doc);
    return those stages. Costs a few stat calls when nothing looks outdated. `dvc_lock_held`:
    this process holds DVC's repository lock already (ladder.workspace.hold_dvc), so DVC is
    asked without taking it again."""
    root = Path(root)
    lock_file = root / "dvc.lock"
    if not (root / ".dvc").is_dir() or not lock_file.exists():
        return []
    locked = list((yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}))
    jobs = _jobs(locked, selected)
    if not any(_looks_outdated(inputs, outputs) for _, inputs, outputs in jobs):
        return []
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            if dvc_lock_held:
                from dvc.lock import LockNoop

                repo.lock = LockNoop()  # ours already: a second flock would wait for us
            changed = {name for name, found in repo.status().items() if not _settings_only(found)}
    except (DvcException, OSError) as e:  # DVC cannot tell now: Snakemake goes by timestamps
        log.warning("could not ask DVC which results are up to date (%s)", e)
        return []
    adopted, now = [], time.time()
    for name, inputs, outputs in jobs:  # upstream first: a bumped output is a later job's input
        if name in changed or not _looks_outdated(inputs, outputs):
            continue
        now += 0.01
        for path in outputs:
            stamp = path / ".snakemake_timestamp"
            os.utime(stamp if stamp.exists() else path, (now, now))
        adopted.append(name)
    if adopted:
        log.info("results of %s are up to date per dvc.lock; timestamps adjusted", adopted)
    return adopted
