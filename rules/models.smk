# prepare_model runs where the workflow is started (localrule): Hub downloads need the network,
# which cluster compute nodes often lack. GGUF sources are converted to safetensors once here.


localrules:
    prepare_model,


rule prepare_model:
    output:
        manifest="results/models/{model}/manifest.json",
    params:
        spec=get_model_spec,
    log:
        "results/logs/prepare_model/{model}.log",
    threads: 2
    conda:
        "../envs/model.yaml"
    script:
        "../workflow/scripts/prepare_model.py"
