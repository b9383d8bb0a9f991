# Settings files, dataset download, preparation and statistics.


localrules:
    configure,


rule configure:
    # Every stage reads its settings from one of these files; each file's content is this rule's
    # params, so an edit to params.yaml rewrites exactly the files (and reruns exactly the jobs)
    # whose resolved settings changed.
    output:
        f"{CONFIGS}/{{name}}.json",
    log:
        "logs/configure/{name}.log",
    benchmark:
        "logs/benchmarks/configure/{name}.tsv"
    params:
        settings=settings_json,
    shell:
        "ladder --log {log} configure --json {params.settings:q} --out {output}"


rule download:
    input:
        settings=f"{CONFIGS}/download.json",
        code=CODE["download"],
    output:
        directory("results/data/raw"),
    log:
        "logs/download.log",
    benchmark:
        "logs/benchmarks/download.tsv"
    shell:
        "ladder --log {log} download --settings {input.settings} --out {output}"


rule prepare:
    input:
        settings=f"{CONFIGS}/prepare.json",
        # A folder's timestamp says nothing about its content (a `dvc pull` restores it at any
        # time): the raw data changes only when download.json does, which reruns this job anyway.
        raw=ancient("results/data/raw"),
        code=CODE["prepare"],
    output:
        PREPARED_FILES,
    log:
        "logs/prepare.log",
    benchmark:
        "logs/benchmarks/prepare.tsv"
    threads: workflow.cores
    params:
        out=folder_of(0, output=True),
    shell:
        "ladder --log {log} prepare --settings {input.settings} --raw {input.raw}"
        " --out {params.out} --workers {threads}"


rule stats:
    input:
        train_x=f"{PREPARED}/train_x.npy",
        code=CODE["stats"],
    output:
        "results/data/stats.json",
    log:
        "logs/stats.log",
    benchmark:
        "logs/benchmarks/stats.tsv"
    shell:
        "ladder --log {log} stats --train-x {input.train_x} --out {output}"
