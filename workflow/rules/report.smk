# One page that aggregates every selected experiment into tables and figures.


rule report:
    input:
        unpack(stage_inputs("report")),
    output:
        **stage_outputs(
            "report",
            categories={
                "html": "Report",
                "ladder": "Tables",
                "checkpoints": "Tables",
                "curves": "Tables",
                "figures": "Figures",
            },
        ),
    log:
        stage_log("report"),
    conda:
        LADDER_ENV
    params:
        **stage_params("report"),
    shell:
        stage_shell("report")
