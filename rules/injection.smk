# Concept injection: one concept_vectors job per model (every configured layer captured in the
# same passes), one inject_<experiment> job per (experiment, model) that runs the experiment on
# every cell of its sweep with the model loaded once, one grade_injection job per model, then the
# statistics. Each cell is its own file, declared as an update() output: Snakemake leaves the
# existing cells in place when a job reruns, and the job computes only the cells whose stored
# fingerprint differs from the one it would write (llm_introspection.injection.sweep), so adding a
# strength computes only the new cells and changing a key the job reads recomputes all of its
# cells. What an experiment reads and writes comes from the registry (llm_introspection.registry);
# each job's params hold only the keys it reads.


rule concept_vectors:
    input:
        **injection_resources(registry.VECTOR_RESOURCES),
        manifest="results/models/{model}/manifest.json",
    output:
        vector_files(vector_layers()),
    log:
        "results/logs/concept_vectors/{model}.log",
    benchmark:
        "results/benchmarks/concept_vectors/{model}.tsv"
    conda:
        "../envs/model.yaml"
    threads: MODEL_THREADS
    resources:
        gpu=get_model_gpus,
        model_jobs=MODEL_JOB_SLOT,
    params:
        layers=[float(layer) for layer in vector_layers()],
        settings=settings_of("injection", registry.VECTOR_SETTINGS),
        resources=injection_resources(registry.VECTOR_RESOURCES),
        runtime=get_runtime,
        template_date=get_vector_template_date,
    script:
        "../workflow/scripts/concept_vectors.py"


for experiment in INJECTION["experiments"]:

    rule:
        name:
            f"inject_{experiment}"
        input:
            **injection_resources(EXPERIMENTS[experiment].resources),
            manifest="results/models/{model}/manifest.json",
            vectors=vector_files(injection_layers(experiment)),
        output:
            update(injection_cell_files(experiment, experiment)),
        log:
            f"results/logs/inject/{experiment}/{{model}}.log",
        benchmark:
            f"results/benchmarks/inject/{experiment}/{{model}}.tsv"
        conda:
            "../envs/model.yaml"
        threads: MODEL_THREADS
        resources:
            gpu=get_model_gpus,
            model_jobs=MODEL_JOB_SLOT,
        params:
            experiment=experiment,
            cells=inject_cells(experiment),
            settings=inject_settings(experiment),
            resources=injection_resources(EXPERIMENTS[experiment].resources),
            runtime=get_runtime,
            template_date=get_template_date,
        script:
            "../workflow/scripts/inject.py"


rule grade_injection:
    input:
        **injection_resources(registry.GRADING_RESOURCES),
        responses=injection_cell_files("detection_responses", "detection_responses"),
        manifest=get_judge_manifest,
    output:
        update(injection_cell_files("detection_graded", "detection_responses")),
    log:
        "results/logs/grade_injection/{model}.log",
    benchmark:
        "results/benchmarks/grade_injection/{model}.tsv"
    conda:
        "../envs/model.yaml"
    threads: MODEL_THREADS
    resources:
        gpu=get_judge_gpus,
        model_jobs=MODEL_JOB_SLOT,
    params:
        settings=settings_of("injection", registry.GRADING_SETTINGS),
        resources=injection_resources(registry.GRADING_RESOURCES),
        runtime=get_judge_runtime,
        template_date=config["prompts"]["template_date"],
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
