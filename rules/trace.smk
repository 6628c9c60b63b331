rule trace:
    input:
        manifest="results/models/{model}/manifest.json",
        generations=job_outputs("results/generations/{model}/{prompt}.json"),
    output:
        activations=job_outputs("results/activations/{model}/{prompt}.h5"),
    log:
        job_file("results/logs/trace", ".log"),
    benchmark:
        job_file("results/benchmarks/trace", ".tsv")
    conda:
        "../envs/model.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        trace=canonical(config["trace"]),
        runtime=get_runtime,
    script:
        "../workflow/scripts/trace.py"
