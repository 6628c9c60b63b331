# Self-knowledge evaluations (issue 13): one job per (evaluation, model), their item-level
# statistics (each model against its base), figures, and the introspection profile that joins
# every line of work per model. What each evaluation reads is in
# llm_introspection.selfknowledge.design; params hold only the keys a job reads. Detection reads
# the detection data of rule detection_data: a LoRA model its variant's, its base every evaluated
# variant's (SELFKNOWLEDGE_DETECTION in common.smk), so each variant is compared with its base on
# the same trials.


rule selfknowledge:
    input:
        unpack(get_selfknowledge_inputs),
        manifest="results/models/{model}/manifest.json",
    output:
        "results/selfknowledge/{evaluation}/{model}.json",
    log:
        "results/logs/selfknowledge/{evaluation}/{model}.log",
    benchmark:
        "results/benchmarks/selfknowledge/{evaluation}/{model}.tsv"
    wildcard_constraints:
        evaluation="|".join(selfknowledge_design.EVALUATIONS),
    conda:
        "../envs/model.yaml"
    threads: MODEL_THREADS
    resources:
        gpu=get_model_gpus,
        model_jobs=MODEL_JOB_SLOT,
    params:
        settings=get_selfknowledge_settings,
        resources=get_selfknowledge_resources,
        runtime=get_runtime,
        template_date=get_template_date,
    script:
        "../workflow/scripts/selfknowledge.py"


rule selfknowledge_statistics:
    input:
        **{e: selfknowledge_files(e) for e in SELFKNOWLEDGE_EVALUATIONS},
    output:
        **selfknowledge_statistics_outputs(),
        summary="results/statistics/selfknowledge_statistics.json",
    log:
        "results/logs/selfknowledge_statistics.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    params:
        models=get_selfknowledge_models,
        settings=settings_of("selfknowledge", ["bootstrap_resamples", "seed"]),
    script:
        "../workflow/scripts/selfknowledge_statistics.py"


rule selfknowledge_figures:
    input:
        **selfknowledge_statistics_outputs(),
    output:
        **{
            name: report(
                f"results/figures/{name}.png",
                caption=f"../report/captions/{name}.rst",
                category="Self-knowledge",
            )
            for name in SELFKNOWLEDGE_FIGURES
        },
    log:
        "results/logs/selfknowledge_figures.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    script:
        "../workflow/scripts/selfknowledge_figures.py"


rule introspection_profile:
    input:
        unpack(get_profile_inputs),
    output:
        profile="results/statistics/introspection_profile.csv",
        correlations="results/statistics/introspection_correlations.csv",
        summary="results/statistics/introspection_profile.json",
    log:
        "results/logs/introspection_profile.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    params:
        models=canonical(MODELS),
        settings=settings_of("selfknowledge", ["bootstrap_resamples", "seed"]),
    script:
        "../workflow/scripts/introspection_profile.py"
