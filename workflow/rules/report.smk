# One page that aggregates every selected experiment into tables and figures.


rule report:
    input:
        selection=f"{CONFIGS}/selection.json",
        configs=report_configs,
        runs=report_runs,
        data=[f"{PREPARED}/train_x.npy", f"{PREPARED}/classes.json"],
        code=CODE["report"],
    output:
        html=report("results/report/index.html", category="Report"),
        markdown="results/report/report.md",
        ladder=report("results/report/ladder.csv", category="Tables"),
        checkpoints=report("results/report/checkpoints.csv", category="Tables"),
        metrics="results/report/metrics.json",
        figures=report(
            directory("results/report/figures"),
            patterns=["{name}.png"],
            category="Figures",
        ),
    log:
        "logs/report.log",
    benchmark:
        "logs/benchmarks/report.tsv"
    params:
        configs=folder_of("configs", up=2),
        runs=folder_of("runs", up=2),
        data=folder_of("data"),
        out=folder_of("html", output=True),
    shell:
        "ladder --log {log} report --selection {input.selection} --configs {params.configs}"
        " --runs {params.runs} --data {params.data} --out {params.out}"
