# One training job per experiment: per-epoch checkpoints, history, and resumable state.


rule train:
    input:
        settings=f"{CONFIGS}/experiments/{{exp}}/train.json",
        data=SPLIT_FILES,
        stats="results/data/stats.json",
        code=CODE["train"],
    output:
        config=f"{RUNS}/{{exp}}/config.json",
        history=f"{RUNS}/{{exp}}/history.csv",
        steps=f"{RUNS}/{{exp}}/steps.csv",
        # Which epoch_NNN.pt files it holds follows from params (epochs, checkpoint_every).
        checkpoints=directory(f"{RUNS}/{{exp}}/checkpoints"),
    log:
        "logs/train/{exp}.log",
    benchmark:
        "logs/benchmarks/train/{exp}.tsv"
    threads: min(8, workflow.cores)
    resources:
        gpu=GPUS_PER_JOB,
    params:
        data=folder_of("data"),
        out=folder_of("config", output=True),
    shell:
        "ladder --log {log} train --experiment {wildcards.exp} --settings {input.settings}"
        " --data {params.data} --stats {input.stats} --out {params.out} --threads {threads}"
