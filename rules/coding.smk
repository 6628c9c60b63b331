rule code_keywords:
    input:
        generations=get_model_generations,
        lexicon=config["coding"]["lexicon"],
    output:
        "results/coding/keyword/{model}.csv",
    log:
        "results/logs/code_keywords/{model}.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    script:
        "../workflow/scripts/code_keywords.py"
