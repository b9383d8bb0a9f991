"""What the Snakefile does before Snakemake decides which jobs to run.

Only the Snakemake process that will run jobs (or touch their outputs) holds the workspace, and
only it writes there. It:
- takes the workspace (ladder.workspace.hold_workspace): a second Snakemake run is refused before
  it has changed anything, and DVC's commands are refused until this one exits;
- writes params.yaml resolved into results/configs/ (a file only where its content changes);
- gives the results DVC vouches for timestamps Snakemake trusts (ladder.engines).

Every other Snakemake process (a dry run, --summary, --dag, a run refused by Snakemake's own
lock, a job on a cluster node) writes nothing there, and plans with the settings params.yaml
resolves to now without them: it ignores the settings files' timestamps (`ancient`), and a
settings file not written yet is read from a private overlay folder (`Load.settings`).

Both decide by content which jobs the settings rerun: a job whose results record other settings
than params.yaml resolves to (what it read, ladder.provenance: a folder's inner manifest, the
report's provenance.json) is forced to rerun. So the plan is the same whatever
results/configs/ holds (another engine's or an earlier run's settings), and a result is never
taken as current for settings it was not made with, whatever its timestamps say.

Both look inside the finished folders the DAG will read (`manifest.read`: every listed file
there with its size, and the inside and outside manifests agree) and at the records a run leaves
(stats.json, config.json, and the files a folder's manifest vouches for): a job whose output is
damaged is forced to rerun (as --forcerun would), with a log line that says why, before anything
reads it. Removing the damaged output would not do: Snakemake reruns a job for a missing output
only when a job after it has to run anyway.

With a default storage provider (every result in a bucket: Snakemake's Kubernetes route,
ladder.stages.storage_command) there are no results here to adopt or check: the process holds
the workspace and writes the settings files, and so does a job's own process (a pod has no other
copy of them); Snakemake compares the bucket's timestamps with theirs, and each job checks what
it reads against its manifest.

What the process will do is known only once Snakemake builds its DAG (the Snakefile is loaded
before the command's executor is chosen), so the rules' inputs are functions, and the first one
Snakemake calls runs `load` (workflow/rules/common.smk).
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ladder import config, engines, io, manifest, stages, workspace
from ladder.data import source_links, sources_on_disk

log = logging.getLogger(__name__)

OVERLAY = Path(".snakemake/ladder-plan")  # private folders of processes that do not hold


def run_kind(workflow) -> str:
    """'run' (jobs execute, locally or on a cluster), 'touch', 'dryrun', 'view' (--summary,
    --dag, ...) or 'job' (Snakemake inside a cluster job), once the DAG is being built."""
    if not workflow.is_main_process:
        return "job"
    if workflow.executor_plugin is None:
        return "view"
    if workflow.dryrun:
        return "dryrun"
    return "touch" if workflow.touch else "run"


def storage_mode(workflow) -> bool:
    """Whether every result goes through a bucket (--default-storage-provider; see
    ladder.stages.storage_command)."""
    settings = getattr(workflow, "storage_settings", None)
    return getattr(settings, "default_storage_provider", None) is not None


@dataclass
class Load:
    """What the rules read: where each settings file is, and the jobs that must rerun."""

    # A plan that writes nothing decides by content (the forced jobs), ignoring the settings
    # files' timestamps; through a bucket it decides by them (its overlay holds the changed ones).
    ancient_settings: bool = False
    overlay: Path | None = None  # a dry run's private folder
    moved: dict[str, str] = field(default_factory=dict)  # settings path -> overlay path
    forced: dict[str, str] = field(default_factory=dict)  # output -> why its job reruns

    def settings(self, path: str) -> str:
        return self.moved.get(path, path)

    def private(self, root: Path) -> Path:
        if self.overlay is None:
            (root / OVERLAY).mkdir(parents=True, exist_ok=True)
            self.overlay = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root / OVERLAY))
            atexit.register(shutil.rmtree, self.overlay, ignore_errors=True)
        return self.overlay


def load(
    params: config.Params,
    kind: str,
    force: Callable[[str], None],
    root: Path = Path(),
    storage: bool = False,
) -> Load:
    """Everything the Snakefile does before the DAG's jobs are decided (see the module doc):
    `kind` from run_kind; `force(output)` makes the job that writes `output` rerun; `storage`
    from storage_mode."""
    if kind == "job":
        if storage:  # perhaps on a node without the workspace (Kubernetes): its own settings
            config.write_settings(params, root / stages.CONFIGS)
        return Load()
    if storage and kind == "touch":
        raise RuntimeError(
            "--touch with a default storage provider: the checks that keep it from marking "
            "results as current that are not read results/, and the results are in the bucket; "
            "run without --touch"
        )
    holder = kind in ("run", "touch")
    if holder:
        workspace.hold_workspace(root)
    workspace.refuse_if_dvc_running(root)
    if holder:  # before anything is written: no DVC command can start from here on
        workspace.hold_dvc(root)
    config.check_runnable(params, root)
    loaded = Load(ancient_settings=not holder and not storage)
    # A folder dataset's listings, taken once: the links' record and changed_sources read them.
    sources = params.download_settings()
    listed = sources_on_disk.listings(sources)
    if holder:
        config.write_settings(params, root / stages.CONFIGS)
        source_links.write_links(sources, root / stages.SOURCE, listed)
    else:
        _overlay(params, root, loaded, changed=storage)
    if storage:
        # The results are in the bucket, not in results/: there is nothing here to adopt from
        # DVC or to check (README, "Kubernetes"). Snakemake compares the bucket's timestamps
        # with the settings files'; each job checks what it reads against its manifest.
        return loaded
    if holder or workspace.free(root):
        engines.adopt_dvc_results(params.selected, root, dvc_lock_held=holder)
    loaded.forced = {
        **changed_settings(params, root),
        **changed_sources(sources, root, listed),
        **damaged_outputs(params, root),
    }
    if kind == "touch":
        refuse_touch(params, root, loaded.forced)
    for output, why in loaded.forced.items():
        log.warning("%s: the job that writes %s runs again", why, output)
        force(output)
    return loaded


def _overlay(params: config.Params, root: Path, loaded: Load, changed: bool = False) -> None:
    """Write the settings files results/configs/ does not have yet into a private folder (a job
    needs its inputs to exist to be planned); `changed`: also those whose content differs, so
    that their timestamps are newer than the results'."""
    for rel, content in params.settings_files().items():
        path = f"{stages.CONFIGS}/{rel}"
        text, here = io.record_text(content), root / path
        if here.exists() and not (changed and here.read_text() != text):
            continue
        moved = loaded.private(root) / "configs" / rel
        moved.parent.mkdir(parents=True, exist_ok=True)
        moved.write_text(text)
        loaded.moved[path] = os.path.relpath(moved, root)


# ----------------------------------------------------------------------------------------------
# Results made with other settings


def _jobs(params: config.Params):
    """(stage, experiment or None, path formatter) of every job of the selected DAG."""
    for stage in stages.STAGES.values():
        if stage.name == "configure":
            continue
        for exp in params.selected if stage.foreach else [None]:
            yield stage, exp, (lambda p, exp=exp: p.replace("{exp}", exp) if exp else p)


def _settings_read(stage: stages.Stage, at, selected) -> list[str]:
    """The settings files a job reads."""
    paths = [at(p) for p in stage.deps.values()]
    paths += [p.replace("{exp}", e) for e in selected for p in stage.each_experiment]
    return [p for p in paths if p.startswith(f"{stages.CONFIGS}/")]


def _made_with(root: Path, stage: stages.Stage, at) -> tuple[str, dict] | None:
    """(the output that stands for the job's results, what they record they were read from), or
    None when the job has no results yet."""
    for out in stage.outs.values():
        path = at(out.path)
        if out.folder and out.manifest:
            if not (root / stages.manifest(path)).exists() or _not_here(root, path, out):
                return None
            return stages.manifest(path), manifest.made_with(root / path)
        if out.provenance:
            try:
                return path, io.read_json(root / path)["made_with"]
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                return None
    return None


def changed_settings(params: config.Params, root: Path) -> dict[str, str]:
    """Output -> why, for each job whose results were made with other settings than params
    resolves to now (by the digests they record; see the module doc)."""
    digests = {
        f"{stages.CONFIGS}/{rel}": config.settings_digest(content)
        for rel, content in params.settings_files().items()
    }
    found = {}
    for stage, _, at in _jobs(params):
        read = _settings_read(stage, at, params.selected)
        made = _made_with(root, stage, at) if read else None
        if made is None:
            continue
        target, record = made
        changed = [p for p in read if record.get(p) != digests.get(p)]
        if changed:
            found[target] = f"{changed[0]} is not what {target} was made with"
    return found


def refuse_touch(params: config.Params, root: Path, forced: dict[str, str]) -> None:
    """--touch marks outputs as current: refuse it where that would pass off as current a
    result that was never made, or was made with other settings or data, or is damaged, down to
    a byte changed in place (every file's digest: --touch is rare, and vouches for them all)."""
    never = {
        path: "never made"
        for stage, _, at in _jobs(params)
        for out in stage.outs.values()
        for path in map(at, out.paths)
        if not (root / path).exists() and not _not_here(root, at(out.path), out)
    }
    stale = [f"{output}: {why}" for output, why in {**never, **forced}.items()]
    damaged = list(unverified(params, root).values())  # each with the command that rebuilds it
    if not (stale or damaged):
        return
    parts = []
    if stale:
        parts.append(
            "; ".join(stale[:5]) + ("; ..." if len(stale) > 5 else "")
            + ". Run `snakemake report --cores 1` for them first"
        )  # fmt: skip
    if damaged:  # a plan cannot see them, so `snakemake report` would not rebuild them
        parts.append("; ".join(damaged[:5]) + ("; ..." if len(damaged) > 5 else ""))
    raise RuntimeError(
        "--touch would mark results as current that are not: "
        + ". ".join(parts)
        + ". (--touch is for keeping results after an edit of the code that changes none)"
    )


def unverified(params: config.Params, root: Path) -> dict[str, str]:
    """Output -> what is wrong, for every finished folder of the DAG whose files do not all
    match their manifest's digests, with the command that rebuilds it (what a command that
    vouches for results checks first: --touch, ladder dvc-commit)."""
    found = {}
    for stage, _, at in _jobs(params):
        for out in stage.outs.values():
            folder = root / at(out.path)
            if not (out.folder and out.manifest and manifest.sibling(folder).exists()):
                continue
            if _not_here(root, at(out.path), out):
                continue
            try:
                manifest.verify(folder)
            except manifest.ManifestError as e:
                found[stages.manifest(at(out.path))] = str(e)
    return found


# ----------------------------------------------------------------------------------------------
# Finished outputs that are no longer whole


def damaged_outputs(params: config.Params, root: Path) -> dict[str, str]:
    """Output that stands for a damaged result -> what is wrong, for every job of the DAG whose
    outputs are missing or not whole. Cheap: a stat per file of each folder, and the small
    records read whole (large files are checked by digest where they are read)."""
    found = {}
    later = _made_later(params, root)
    for stage, _, at in _jobs(params):
        for out in stage.outs.values():
            path = at(out.path)
            paths = [path, stages.manifest(path)] if out.folder and out.manifest else [path]
            if _not_here(root, path, out):
                continue
            missing = [p for p in paths if not (root / p).exists()]
            # Missing while a job after it has results (a job killed after an edit, a folder
            # removed): Snakemake would not rerun it, and those results would pass for what
            # params.yaml says now. Missing with nothing after it: not made yet, it runs anyway.
            if missing:
                problem = f"{missing[0]}: missing" if later(stage, at) else None
            else:
                problem = _problem(root, path, out)
            if problem:
                target = paths[-1]  # the file that stands for the output (a manifest)
                found[target] = problem
                break
    return found


def _not_here(root: Path, path: str, out: stages.Out) -> bool:
    """A folder whose files DVC does not keep (stages.Out.dvc_files), absent while its manifest
    is there: after `dvc pull` in a clone, or removed to free the disk. Its manifest stands for
    it, so nothing after it reruns; a job that must read it says how to make it again."""
    return (
        not out.dvc_files and (root / stages.manifest(path)).exists() and not (root / path).exists()
    )


def _made_later(params: config.Params, root: Path):
    """A test of whether any job that reads a job's outputs (directly or through others) has
    results in `root`. Each job's answer is found once, from its readers' (a walk from every
    job was quadratic: the report reads every experiment's outputs; 8 of a 1000-experiment dry
    run's 22 CPU-s)."""
    outputs, inputs = [], []  # of every job
    for stage, _, at in _jobs(params):
        outputs.append(frozenset(at(p) for p in stage.out_paths))
        read = {at(p) for p in stage.deps.values()}
        read |= {p.replace("{exp}", e) for e in params.selected for p in stage.each_experiment}
        inputs.append(read)
    made_by = {path: job for job, outs in enumerate(outputs) for path in outs}
    readers: list[set[int]] = [set() for _ in outputs]
    for job, read in enumerate(inputs):
        for path in read & made_by.keys():
            readers[made_by[path]].add(job)

    @functools.cache
    def has_results(job: int) -> bool:
        return any((root / o).exists() for o in outputs[job])

    @functools.cache
    def later(job: int) -> bool:  # recursion as deep as the DAG: a few stages
        return any(has_results(r) or later(r) for r in readers[job])

    job_of = {outs: job for job, outs in enumerate(outputs)}
    return lambda stage, at: later(job_of[frozenset(at(p) for p in stage.out_paths)])


def _problem(root: Path, path: str, out: stages.Out) -> str | None:
    full = root / path
    try:
        if out.folder and out.manifest:
            manifest.read(full)
            manifest.verify_beside(full)
        elif out.record and full.is_file():
            io.read_record(full)
    except (ValueError, OSError) as e:
        return str(e).split("; regenerate", 1)[0]
    return None


def changed_sources(settings: dict, root: Path, listed: dict) -> dict[str, str]:
    """The raw data's manifest -> why, when a folder dataset's files changed since `download`
    imported them (the listings it recorded differ from `listed`, the folders' now; `settings`:
    the download's)."""
    raw = root / stages.RAW
    recorded = manifest.made_with(raw)
    if not recorded:
        return {}
    for key in sources_on_disk.KEYS:
        now = listed.get(f"dataset.{key}")
        if now is None:
            continue  # unset, or gone: the import itself says so
        if recorded.get(f"dataset.{key}") != now:
            why = f"dataset.{key} ({settings[key]}) changed since it was imported"
            return {stages.manifest(stages.RAW): why}
    return {}
