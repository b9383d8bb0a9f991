# One training job per experiment: per-epoch checkpoints, history, and resumable state.


rule train:
    input:
        unpack(stage_inputs("train")),
    output:
        **stage_outputs("train"),
    log:
        stage_log("train"),
    conda:
        LADDER_ENV
    threads: stage_threads("train")
    resources:
        gpu=stage_gpus("train"),
    params:
        **stage_params("train"),
    shell:
        stage_shell("train")
