import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the llm_introspection library

from llm_introspection.jobs import run_prepare_model
from llm_introspection.storage import remove_stale_temporaries

remove_stale_temporaries(snakemake.output)  # what a killed run of this job left
lora = "base" in snakemake.input.keys()  # a LoRA source: its base's manifest and the adapter
run_prepare_model(
    snakemake.wildcards.model,
    snakemake.params.spec,
    snakemake.output.manifest,
    snakemake.input.shared,
    base_manifest_path=snakemake.input.base if lora else None,
    adapter_dir=str(Path(snakemake.input.adapter_config).parent) if lora else None,
)
