import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the llm_introspection library

from llm_introspection.finetune.jobs import run_finetune
from llm_introspection.storage import remove_stale_temporaries

remove_stale_temporaries(snakemake.output)  # what a killed run of this job left
run_finetune(
    manifest_path=snakemake.input.manifest,
    data_paths={"train": snakemake.input.train, "validation": snakemake.input.validation},
    directions_path=snakemake.input.directions,
    outputs={
        "adapter_dir": str(Path(snakemake.output.adapter_weights).parent),
        "losses": snakemake.output.losses,
        "validation": snakemake.output.validation,
        "provenance": snakemake.output.provenance,
    },
    settings=snakemake.params.settings,
    runtime=snakemake.params.runtime,
    threads=snakemake.threads,
)
