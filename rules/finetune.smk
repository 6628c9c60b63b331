# Introspection finetuning: steer-then-remove detection data and a LoRA adapter per (model,
# variant). A model of the config with source {kind: lora, base: M, adapter: {variant: V}} is
# prepared from the adapter trained here (rule prepare_model), so every experiment can run on it.


rule detection_data:
    input:
        unpack(get_detection_inputs),
    output:
        train="results/finetune/{model}/{variant}/data/train.json",
        validation="results/finetune/{model}/{variant}/data/validation.json",
        heldout="results/finetune/{model}/{variant}/data/heldout.json",
        directions="results/finetune/{model}/{variant}/data/directions.h5",
    log:
        "results/logs/detection_data/{model}/{variant}.log",
    benchmark:
        "results/benchmarks/detection_data/{model}/{variant}.tsv"
    wildcard_constraints:
        model=names_pattern(FINETUNE_BASES),
        variant=names_pattern(FINETUNE_VARIANTS),
    conda:
        "../envs/model.yaml"
    threads: MODEL_THREADS
    resources:
        gpu=get_model_gpus,
        model_jobs=MODEL_JOB_SLOT,
    params:
        variant=get_variant_entry,
        settings=settings_of("finetune", DETECTION_DATA_SETTINGS),
        runtime=get_runtime,
        template_date=get_template_date,
    script:
        "../workflow/scripts/detection_data.py"


rule finetune:
    input:
        manifest="results/models/{model}/manifest.json",
        train="results/finetune/{model}/{variant}/data/train.json",
        validation="results/finetune/{model}/{variant}/data/validation.json",
        directions="results/finetune/{model}/{variant}/data/directions.h5",
    output:
        adapter_config="results/finetune/{model}/{variant}/adapter/adapter_config.json",
        adapter_weights="results/finetune/{model}/{variant}/adapter/adapter_model.safetensors",
        losses="results/finetune/{model}/{variant}/loss.csv",
        validation="results/finetune/{model}/{variant}/validation.csv",
        provenance="results/finetune/{model}/{variant}/training.json",
    log:
        "results/logs/finetune/{model}/{variant}.log",
    benchmark:
        "results/benchmarks/finetune/{model}/{variant}.tsv"
    wildcard_constraints:
        model=names_pattern(FINETUNE_BASES),
        variant=names_pattern(FINETUNE_VARIANTS),
    conda:
        "../envs/model.yaml"
    threads: MODEL_THREADS
    resources:
        gpu=get_model_gpus,
        model_jobs=MODEL_JOB_SLOT,
    params:
        settings=settings_of("finetune", FINETUNE_SETTINGS),
        runtime=get_runtime,
    script:
        "../workflow/scripts/finetune.py"
