rule probes:
    input:
        activations=expand(
            "results/activations/{model}/{prompt}.h5", model=MODELS, prompt=PROMPT_IDS
        ),
        coding=expand("results/coding/keyword/{model}.csv", model=MODELS),
        judge=expand("results/judge/{model}.csv", model=MODELS),
        cross=expand(
            "results/activations_cross/{model}/{prompt}.h5",
            model=PARTNER,
            prompt=PROMPT_IDS,
        ),
        noise=expand(
            "results/activations_noise/{model}/{prompt}.h5",
            model=PAIR_BASES,
            prompt=PROMPT_IDS,
        ),
    output:
        table="results/probing/probes.csv",
        statistics="results/statistics/probing_statistics.json",
    log:
        "results/logs/probes.log",
    conda:
        "../envs/analysis.yaml"
    threads: 2
    params:
        probing=canonical(config["probing"]),
    script:
        "../workflow/scripts/probes.py"


rule embeddings:
    input:
        activations=expand(
            "results/activations/{model}/{prompt}.h5", model=MODELS, prompt=PROMPT_IDS
        ),
    output:
        "results/probing/embeddings.csv",
    log:
        "results/logs/embeddings.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    params:
        seed=config["probing"]["seed"],
    script:
        "../workflow/scripts/embeddings.py"
