# Concept injection: vectors per (model, layer), one job per (experiment, model, layer, strength)
# cell, the judge's grading of sampled detection responses, and the statistics.
SCHEMA_DIR = str(Path(workflow.basedir) / "config/schema")
# What a cell's job depends on: not the sweep's lists, so adding a model, experiment, layer or
# strength adds jobs and reruns none of the existing ones.
CELL_SETTINGS = {
    key: value
    for key, value in INJECTION.items()
    if key not in ("models", "experiments", "layer_fractions", "strengths")
}


rule concept_vectors:
    input:
        manifest="results/models/{model}/manifest.json",
        resources=[
            INJECTION["resources"][key]
            for key in ("concepts", "contrastive_pairs", "neutral_sentences")
        ],
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
        gpu=1,
    params:
        injection=CELL_SETTINGS,
        runtime=get_runtime,
        schema_dir=SCHEMA_DIR,
    script:
        "../workflow/scripts/concept_vectors.py"


rule inject:
    input:
        manifest="results/models/{model}/manifest.json",
        vectors="results/injection/vectors/{model}/layer{layer}.h5",
        resources=list(INJECTION["resources"].values()),
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
        gpu=1,
    params:
        injection=CELL_SETTINGS,
        generation=config["generation"],
        runtime=get_runtime,
        schema_dir=SCHEMA_DIR,
    script:
        "../workflow/scripts/inject.py"


rule grade_injection:
    input:
        responses="results/injection/detection_responses/{model}/layer{layer}_strength{strength}.json",
        manifest=get_judge_manifest,
        resources=[
            INJECTION["resources"][key] for key in ("detection", "grading_rubric")
        ],
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
        gpu=1,
    params:
        injection=CELL_SETTINGS,
        runtime=get_judge_runtime,
        schema_dir=SCHEMA_DIR,
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
