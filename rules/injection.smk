# Concept injection: vectors per (model, layer), one job per (experiment, model, layer, strength)
# cell, the judge's grading of sampled detection responses, and the statistics. What an
# experiment reads and writes comes from the registry (llm_introspection.registry); each job's
# params hold only the keys it reads, so adding a model, experiment, layer or strength adds jobs
# and changing a key reruns only the jobs that read it.


rule concept_vectors:
    input:
        **injection_resources(registry.VECTOR_RESOURCES),
        manifest="results/models/{model}/manifest.json",
    output:
        "results/injection/vectors/{model}/layer{layer}.h5",
    log:
        "results/logs/concept_vectors/{model}/layer{layer}.log",
    wildcard_constraints:
        layer="[0-9.]+",
    conda:
        "../envs/model.yaml"
    threads: 2
    resources:
        gpu=get_model_gpus,
        model_jobs=1,
    params:
        settings=settings_of("injection", registry.VECTOR_SETTINGS),
        resources=injection_resources(registry.VECTOR_RESOURCES),
        runtime=get_runtime,
    script:
        "../workflow/scripts/concept_vectors.py"


rule inject:
    input:
        unpack(get_inject_resources),
        manifest="results/models/{model}/manifest.json",
        vectors="results/injection/vectors/{model}/layer{layer}.h5",
    output:
        "results/injection/{experiment}/{model}/layer{layer}_strength{strength}.json",
    log:
        "results/logs/inject/{experiment}/{model}/layer{layer}_strength{strength}.log",
    benchmark:
        "results/benchmarks/inject/{experiment}/{model}/layer{layer}_strength{strength}.tsv"
    wildcard_constraints:
        experiment="|".join(INJECTION["experiments"]),
        layer="[0-9.]+",
        strength="[0-9.]+",
    conda:
        "../envs/model.yaml"
    threads: 2
    resources:
        gpu=get_model_gpus,
        model_jobs=1,
    params:
        settings=get_inject_settings,
        resources=get_inject_resources,
        runtime=get_runtime,
    script:
        "../workflow/scripts/inject.py"


rule grade_injection:
    input:
        **injection_resources(registry.GRADING_RESOURCES),
        responses="results/injection/detection_responses/{model}/layer{layer}_strength{strength}.json",
        manifest=get_judge_manifest,
    output:
        "results/injection/detection_graded/{model}/layer{layer}_strength{strength}.json",
    log:
        "results/logs/grade_injection/{model}/layer{layer}_strength{strength}.log",
    wildcard_constraints:
        layer="[0-9.]+",
        strength="[0-9.]+",
    conda:
        "../envs/model.yaml"
    threads: 2
    resources:
        gpu=get_judge_gpus,
        model_jobs=1,
    params:
        settings=settings_of("injection", registry.GRADING_SETTINGS),
        resources=injection_resources(registry.GRADING_RESOURCES),
        runtime=get_judge_runtime,
    script:
        "../workflow/scripts/grade_injection.py"


rule injection_statistics:
    input:
        **{e: injection_cells(e) for e in INJECTION["experiments"]},
    output:
        **injection_statistics_outputs(),
        summary="results/statistics/injection_statistics.json",
    log:
        "results/logs/injection_statistics.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    params:
        seed=INJECTION["seed"],
    script:
        "../workflow/scripts/injection_statistics.py"


rule injection_figures:
    input:
        **injection_statistics_outputs(),
    output:
        **{
            name: report(
                f"results/figures/{name}.png",
                caption=f"../report/captions/{name}.rst",
                category="Concept injection",
            )
            for name in INJECTION_FIGURES
        },
    log:
        "results/logs/injection_figures.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    script:
        "../workflow/scripts/injection_figures.py"
