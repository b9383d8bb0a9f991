# Helpers shared by all rules: resolved settings, path lists, and code dependencies.
import json
from pathlib import Path

from snakemake.utils import validate

from ladder import code as ladder_code
from ladder import config as ladder_config
from ladder import devices

# Our own check first: its messages name the experiment and key path and suggest the closest
# valid key. Defaults are not injected into `config`: an experiment is a diff of its base, and
# a default filled into the diff would override what the base sets (ladder.config merges them).
PARAMS = ladder_config.Params.from_dict(
    config, source=" + ".join(map(str, workflow.configfiles)) or "config"
)


validate(config, schema="../schemas/params.schema.yaml", set_default=False)


CONFIGS = "results/configs"
PREPARED = "results/data/prepared"
RUNS = "results/experiments"
SPLIT_FILES = [f"{PREPARED}/{s}_{a}.npy" for s in ("train", "val", "test") for a in ("x", "y")]
PREPARED_FILES = [*SPLIT_FILES, f"{PREPARED}/classes.json"]
EVAL_DATA = [f"{PREPARED}/{s}_{a}.npy" for s in ("val", "test") for a in ("x", "y")]
EVAL_DATA.append(f"{PREPARED}/classes.json")
# A GPU job declares gpu=1, so `--resources gpu=N` caps how many run at once.
GPUS_PER_JOB = 1 if devices.cuda_present() else 0

# The code each stage runs: editing it reruns the stage, here and in DVC (see ladder/code.py).
CODE = {stage: [f"workflow/ladder/{f}" for f in files] for stage, files in ladder_code.CODE.items()}


def settings_json(wildcards):
    """The resolved content of results/configs/<name>.json: params of the configure jobs."""
    return json.dumps(PARAMS.settings(f"{wildcards.name}.json"), sort_keys=True)


def folder_of(item, up=1, output=False):
    """A params function: the folder `up` levels above the (first) file of a named input or
    output, so that shell commands get folders derived from the declared files."""

    def get(wildcards, input, output_):
        files = (output_ if output else input)[item]
        first = files if isinstance(files, str) else files[0]
        return str(Path(first).parents[up - 1])

    return lambda wildcards, input, output: get(wildcards, input, output)


def run_dir(exp):
    return f"{RUNS}/{exp}"


def epochs(exp):
    return [f"{e:03d}" for e in PARAMS.experiments[exp].checkpoint_epochs]


def eval_files(wildcards):
    return expand(
        f"{run_dir(wildcards.exp)}/eval/epoch_{{epoch}}.json", epoch=epochs(wildcards.exp)
    )


def report_configs(wildcards):
    parts = ("train", "evaluate", "report")
    return [f"{CONFIGS}/experiments/{exp}/{p}.json" for exp in PARAMS.selected for p in parts]


def report_runs(wildcards):
    files = []
    for exp in PARAMS.selected:
        run = run_dir(exp)
        files += [f"{run}/{name}" for name in ("config.json", "history.csv", "steps.csv")]
        files += expand(f"{run}/eval/epoch_{{epoch}}.json", epoch=epochs(exp))
    return files
