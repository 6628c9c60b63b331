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
    threads: MODEL_THREADS
    resources:
        gpu=get_model_gpus,
        model_jobs=MODEL_JOB_SLOT,
    params:
        trace=canonical(config["trace"]),
        runtime=get_runtime,
    script:
        "../workflow/scripts/trace.py"


rule trace_cross:
    input:
        manifest="results/models/{model}/manifest.json",
        generations=get_partner_generations,
    output:
        activations=job_outputs("results/activations_cross/{model}/{prompt}.h5"),
    log:
        job_file("results/logs/trace_cross", ".log"),
    benchmark:
        job_file("results/benchmarks/trace_cross", ".tsv")
    wildcard_constraints:
        model=names_pattern(PARTNER),
    conda:
        "../envs/model.yaml"
    threads: MODEL_THREADS
    resources:
        gpu=get_model_gpus,
        model_jobs=MODEL_JOB_SLOT,
    params:
        trace=canonical(config["trace"]),
        runtime=get_runtime,
    script:
        "../workflow/scripts/trace_cross.py"


rule trace_noise:
    input:
        manifest="results/models/{model}/manifest.json",
        partner_manifest=get_partner_manifest,
        generations=job_outputs("results/generations/{model}/{prompt}.json"),
    output:
        activations=job_outputs("results/activations_noise/{model}/{prompt}.h5"),
    log:
        job_file("results/logs/trace_noise", ".log"),
    benchmark:
        job_file("results/benchmarks/trace_noise", ".tsv")
    wildcard_constraints:
        model=names_pattern(PAIR_BASES),
    conda:
        "../envs/model.yaml"
    threads: MODEL_THREADS
    resources:
        gpu=get_pair_gpus,
        model_jobs=MODEL_JOB_SLOT,
    params:
        trace=canonical(config["trace"]),
        runtime=get_pair_runtime,
        seed=config["probing"]["seed"],
    script:
        "../workflow/scripts/trace_noise.py"
