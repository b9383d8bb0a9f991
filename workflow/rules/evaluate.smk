# One evaluation job per experiment: every checkpoint on val and test, with and without TTA.


rule evaluate:
    input:
        unpack(stage_inputs("evaluate")),
    output:
        **stage_outputs("evaluate"),
    log:
        stage_log("evaluate"),
    conda:
        LADDER_ENV
    threads: stage_threads("evaluate")
    resources:
        gpu=stage_gpus("evaluate"),
    params:
        **stage_params("evaluate"),
    shell:
        stage_shell("evaluate")
