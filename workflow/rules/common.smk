# Helpers shared by all rules: params.yaml resolved, and the stage table (ladder.stages) turned
# into rule inputs, outputs and shell commands, so that the rules cannot drift from dvc.yaml.
import os
from pathlib import Path

from snakemake.utils import validate

from ladder import config as ladder_config
from ladder import devices, engines, stages, workspace


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


# The settings files every stage reads (results/configs/), rewritten where their content
# changed; the jobs that read a changed file rerun (Snakemake compares small files by checksum).
# Only the process that plans the run writes them, and never while DVC works here. Then the
# results DVC made get timestamps Snakemake can trust (ladder.engines).
if workflow.is_main_process:
    with ladder_config.expected_errors_exit():
        workspace.refuse_if_dvc_running()
        ladder_config.check_runnable(PARAMS, stages.PREPARED, stages.CONFIGS)
        ladder_config.write_settings(PARAMS, stages.CONFIGS)
        engines.adopt_dvc_results(PARAMS.selected)


onstart:
    with ladder_config.expected_errors_exit():
        workspace.hold_for_snakemake()


# A GPU job declares gpu=1, so `--resources gpu=N` caps how many run at once.
GPUS_PER_JOB = 1 if devices.cuda_present() else 0


def stage_inputs(name):
    """A stage's inputs: its files, its code, and per-experiment files for each selected one."""
    stage = stages.STAGES[name]
    files = {key: path for key, path in stage.deps.items()}
    if stage.each_experiment:
        files["runs"] = [
            path.replace("{exp}", exp) for exp in PARAMS.selected for path in stage.each_experiment
        ]
    files["code"] = list(stage.code)
    return files


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
    """At most the stage's threads. Training and evaluation jobs take half the cores each, so
    that two run side by side (a process's start-up and data loading leave a core idle, and
    small models use one core poorly) rather than one after the other."""
    # workflow._cores: None when no --cores was given (--unlock, --summary); `cores` would raise.
    stage, cores = stages.STAGES[name], workflow._cores or 1
    return min(stage.threads, max(1, cores // 2) if stage.gpu else cores)


def stage_gpus(name):
    return GPUS_PER_JOB if stages.STAGES[name].gpu else 0


def stage_shell(name):
    """The table's command, with Snakemake's wildcard and thread count filled in."""
    stage = stages.STAGES[name]
    cmd = stage.command("{wildcards.exp}")
    return f"{cmd} {stage.threads_arg} {{threads}}" if stage.threads_arg else cmd
