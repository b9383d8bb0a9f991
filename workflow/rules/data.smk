# Dataset download, preparation and statistics.


rule download:
    input:
        unpack(stage_inputs("download")),
    output:
        **stage_outputs("download"),
    log:
        stage_log("download"),
    conda:
        LADDER_ENV
    params:
        **stage_params("download"),
    shell:
        stage_shell("download")


rule prepare:
    input:
        unpack(stage_inputs("prepare")),
    output:
        **stage_outputs("prepare"),
    log:
        stage_log("prepare"),
    conda:
        LADDER_ENV
    threads: stage_threads("prepare")
    params:
        **stage_params("prepare"),
    shell:
        stage_shell("prepare")


rule stats:
    input:
        unpack(stage_inputs("stats")),
    output:
        **stage_outputs("stats"),
    log:
        stage_log("stats"),
    conda:
        LADDER_ENV
    params:
        **stage_params("stats"),
    shell:
        stage_shell("stats")
