# Every checkpoint on the val and test splits, with and without test-time augmentation.


rule evaluate:
    input:
        # The checkpoint folder's timestamp says nothing about its content; history.csv is
        # rewritten by every training run, so it is what tells that the checkpoints changed.
        checkpoints=ancient(f"{RUNS}/{{exp}}/checkpoints"),
        history=f"{RUNS}/{{exp}}/history.csv",
        config=f"{RUNS}/{{exp}}/config.json",
        settings=f"{CONFIGS}/experiments/{{exp}}/evaluate.json",
        data=EVAL_DATA,
        code=CODE["evaluate"],
    output:
        f"{RUNS}/{{exp}}/eval/epoch_{{epoch}}.json",
    log:
        "logs/evaluate/{exp}/epoch_{epoch}.log",
    benchmark:
        "logs/benchmarks/evaluate/{exp}/epoch_{epoch}.tsv"
    wildcard_constraints:
        epoch=r"\d{3}",
    threads: min(4, workflow.cores)
    resources:
        gpu=GPUS_PER_JOB,
    params:
        run=folder_of("config"),
        data=folder_of("data"),
    shell:
        "ladder --log {log} evaluate --run {params.run} --settings {input.settings}"
        " --data {params.data} --epoch {wildcards.epoch} --threads {threads}"
