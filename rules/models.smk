# prepare_model runs where the workflow is started (localrule): Hub downloads need the network,
# which cluster compute nodes often lack. GGUF sources are converted to safetensors once here. A LoRA
# source's manifest is its base's plus the adapter's hash (the finetune rule's output, or a directory).


localrules:
    prepare_model,


rule prepare_model:
    input:
        unpack(get_lora_inputs),
        shared=get_twin_source_manifest,
    output:
        manifest="results/models/{model}/manifest.json",
    log:
        "results/logs/prepare_model/{model}.log",
    conda:
        "../envs/model.yaml"
    threads: 2
    params:
        spec=get_model_spec,
    script:
        "../workflow/scripts/prepare_model.py"
