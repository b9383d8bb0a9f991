# Experiment ladder for small-image classification: download -> prepare -> stats -> train ->
# evaluate -> report. Settings live in params.yaml; the stages (commands, inputs, outputs, code)
# in workflow/ladder/stages.py, which these rules read and dvc.yaml is generated from.
import sys

from snakemake.utils import min_version

# This workspace's own ladder package, whatever the virtualenv's install points at (the jobs'
# `ladder` command does the same: workflow/ladder/launch.py).
sys.path.insert(0, f"{workflow.basedir}/workflow")

from ladder import config as ladder_config

min_version("9.0")


# Snakemake's own YAML error names neither the file nor the line: check the syntax first.
with ladder_config.expected_errors_exit():
    ladder_config.check_syntax("params.yaml")


configfile: "params.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.report.output,
