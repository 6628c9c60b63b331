rule entropy_statistics:
    input:
        entropy=expand(
            "results/entropy/{model}/{prompt}.h5", model=MODELS, prompt=PROMPT_IDS
        ),
    output:
        statistics="results/statistics/entropy_statistics_enhanced.csv",
        profiles="results/statistics/entropy_profiles.csv",
    log:
        "results/logs/entropy_statistics.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    params:
        statistics=canonical(config["statistics"]),
    script:
        "../workflow/scripts/entropy_statistics.py"
