# Helpers shared by all rules: params.yaml resolved, and the stage table (ladder.stages) turned
# into rule inputs, outputs and shell commands, so that the rules cannot drift from dvc.yaml.
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from ladder import config as ladder_config
from ladder import devices, snakefile, stages


def config_source():
    """The files (and options) `config` came from, for error messages."""
    settings = workflow.config_settings
    given = [os.path.relpath(p) for p in settings.configfiles]
    files = given if settings.replace_workflow_config and given else ["params.yaml", *given]
    return " + ".join(files + (["--config"] if settings.config else []))


# Our own check first: its messages name the file, experiment and key path and suggest the
# closest valid key. Defaults are not injected into `config`: an experiment is a diff of its
# base, and a default filled into the diff would override what the base sets.
with ladder_config.expected_errors_exit():
    PARAMS = ladder_config.Params.from_dict(config, source=config_source())


validate(config, schema="../schemas/params.schema.yaml", set_default=False)


# Before Snakemake decides what to run, the first input function it calls runs `load`: the run
# that will execute jobs takes the workspace and writes the settings files (results/configs/)
# where their content changed; a dry run or any other view plans with them without writing
# there; both force a rerun of jobs whose finished outputs are damaged, as --forcerun does
# (ladder.snakefile).
_LOADED = []

# With a default storage provider (--default-storage-provider: Snakemake's Kubernetes route, no
# shared file system), every result and log goes through the bucket, and the rules name them by
# Snakemake's local copies (ladder.stages.storage_command). The code (Snakemake's source archive
# carries it) and the settings files (`load` writes them in every process) are each job's own:
# `local()`.
STORAGE = snakefile.storage_mode(workflow)


def load():
    if not _LOADED:
        with ladder_config.expected_errors_exit():
            kind = snakefile.run_kind(workflow)
            force = workflow.dag.forcefiles.add
            _LOADED.append(snakefile.load(PARAMS, kind, force=force, storage=STORAGE))
    return _LOADED[0]


# Every rule's software, for `snakemake --use-conda` (generated from the pins: ladder conda-env).
LADDER_ENV = f"../../{stages.ENV}"


# A GPU job declares gpu=1, so `--resources gpu=N` caps how many run at once.
GPUS_PER_JOB = 1 if devices.cuda_present() else 0


def stage_inputs(name):
    """A stage's inputs, as a function of the job's wildcards: its files, its code, and
    per-experiment files for each selected experiment. Settings files are read where `load`
    says (a dry run's changed ones from its overlay)."""
    stage = stages.STAGES[name]

    def inputs(wildcards):
        loaded = load()

        def read(path):
            # A plan ignores the settings files' timestamps: it decides by content (load), but
            # through a bucket, where it decides by them.
            path, settings = loaded.settings(path), path.startswith(f"{stages.CONFIGS}/")
            path = ancient(path) if loaded.ancient_settings and settings else path
            return local(path) if STORAGE and settings else path

        def folders(paths):
            # Through a bucket, a job reads a folder from its local copy: an input too.
            return [f for f in map(stages.storage_folder, paths) if f] if STORAGE else []

        at = lambda path: path.replace("{exp}", wildcards.get("exp", "{exp}"))
        files = {key: read(at(path)) for key, path in stage.deps.items()}
        files |= {f"{key}_folder": f for key, p in stage.deps.items() for f in folders([at(p)])}
        if stage.each_experiment:
            paths = [p.replace("{exp}", e) for e in PARAMS.selected for p in stage.each_experiment]
            files["runs"] = [read(path) for path in paths] + folders(paths)
        files["code"] = [local(path) for path in stage.code] if STORAGE else list(stage.code)
        return files

    return inputs


def stage_outputs(name, categories=None):
    """A stage's outputs (a folder as directory(), with its manifest); `categories` puts outputs
    into Snakemake's --report."""
    outputs = {}
    for key, out in stages.STAGES[name].outs.items():
        path = directory(out.path) if out.folder else out.path
        if categories and key in categories:
            patterns = ["{name}.png"] if out.folder else []
            path = report(path, category=categories[key], patterns=patterns)
        outputs[key] = path
        if out.folder and out.manifest:
            outputs[f"{key}_manifest"] = stages.manifest(out.path)
    return outputs


def stage_log(name):
    # No `benchmark:` files: Snakemake counts them as outputs, and one left from a Snakemake
    # run would look stale after DVC ran the stage, so Snakemake would rerun it. Each `ladder`
    # command logs its own wall time, CPU time and peak memory instead, under either engine.
    return stages.STAGES[name].log


def stage_threads(name):
    """What Snakemake reserves for a job: training and evaluation use LADDER_THREADS threads in
    both engines (ladder.devices), so that the same params give the same weights whatever
    --cores is; prepare decodes with up to its stage's worth of the cores."""
    # workflow._cores: None when no --cores was given (--unlock, --summary); `cores` would raise.
    stage, cores = stages.STAGES[name], workflow._cores or 1
    if stage.gpu:
        with ladder_config.expected_errors_exit():  # a bad LADDER_THREADS, named
            return devices.threads()
    return min(stage.threads, cores)


def stage_gpus(name):
    return GPUS_PER_JOB if stages.STAGES[name].gpu else 0


def stage_shell(name):
    """The table's command, with Snakemake's wildcard and thread count filled in (through a
    bucket: on Snakemake's local copies, in `stage_params`' root)."""
    stage = stages.STAGES[name]
    cmd = stages.storage_command(stage) if STORAGE else stage.cmd
    cmd = cmd.replace("{exp}", "{wildcards.exp}")
    return f"{cmd} {stage.threads_arg} {{threads}}" if stage.threads_arg else cmd


def stage_params(name):
    """Through a bucket, `root`: the folder of Snakemake's local copies of its objects, laid out
    as the workspace (the job's first output's local path less its path in the workspace).
    Without one, none: a new param would rerun every job Snakemake ran before (its params
    trigger)."""
    first = stages.STAGES[name].out_paths[0]

    def root(wildcards, output):
        rel = Path(first.replace("{exp}", wildcards.get("exp", "{exp}"))).parts
        local_path = Path(output[0]).parts
        if local_path[-len(rel) :] != rel:
            raise WorkflowError(f"{name}: output {output[0]} is not a copy of {first}")
        return str(Path(*local_path[: -len(rel)]))

    return {"root": root} if STORAGE else {}
