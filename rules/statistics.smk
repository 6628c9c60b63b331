rule content_statistics:
    input:
        coding=expand("results/coding/keyword/{model}.csv", model=MODELS),
    output:
        content="results/statistics/content_statistics.csv",
        mixed_effects="results/statistics/mixed_effects.json",
        scaling="results/statistics/scaling_statistics.json",
    log:
        "results/logs/content_statistics.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    params:
        statistics=canonical(config["statistics"]),
    script:
        "../workflow/scripts/content_statistics.py"
