rule generate:
    input:
        manifest="results/models/{model}/manifest.json",
        prompts=get_job_prompt_files,
    output:
        generations=job_outputs("results/generations/{model}/{prompt}.json"),
        entropy=job_outputs("results/entropy/{model}/{prompt}.h5"),
    log:
        job_file("results/logs/generate", ".log"),
    benchmark:
        job_file("results/benchmarks/generate", ".tsv")
    conda:
        "../envs/model.yaml"
    threads: MODEL_THREADS
    resources:
        gpu=get_model_gpus,
        model_jobs=MODEL_JOB_SLOT,
    params:
        generation=canonical(config["generation"]),
        runtime=get_runtime,
        template_date=get_template_date,
        study=config["study"],
    script:
        "../workflow/scripts/generate.py"
