rule judge:
    input:
        manifest=get_judge_manifest,
        generations=get_model_generations,
        prompts=expand(
            "{directory}/{prompt}.yaml",
            directory=config["prompts"]["dir"],
            prompt=PROMPT_IDS,
        ),
        rubric=config["judge"]["rubric"],
    output:
        "results/judge/{model}.csv",
    log:
        "results/logs/judge/{model}.log",
    benchmark:
        "results/benchmarks/judge/{model}.tsv"
    conda:
        "../envs/model.yaml"
    threads: MODEL_THREADS
    resources:
        gpu=get_judge_gpus,
        model_jobs=MODEL_JOB_SLOT,
    params:
        judge=settings_of("judge", ("max_completion_tokens", "batch_size")),
        runtime=get_judge_runtime,
        template_date=config["prompts"]["template_date"],
    script:
        "../workflow/scripts/judge.py"


rule agreement_statistics:
    input:
        coding=expand("results/coding/keyword/{model}.csv", model=MODELS),
        judge=expand("results/judge/{model}.csv", model=MODELS),
    output:
        "results/statistics/agreement_statistics.json",
    log:
        "results/logs/agreement_statistics.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    script:
        "../workflow/scripts/agreement_statistics.py"
