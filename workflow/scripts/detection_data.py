import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the llm_introspection library

from llm_introspection.finetune.jobs import run_detection_data
from llm_introspection.storage import remove_stale_temporaries

remove_stale_temporaries(snakemake.output)  # what a killed run of this job left
run_detection_data(
    manifest_path=snakemake.input.manifest,
    texts_path=snakemake.input.texts,
    concepts_path=getattr(snakemake.input, "concepts", None),
    variant_name=snakemake.wildcards.variant,
    variant_entry=snakemake.params.variant,
    settings=snakemake.params.settings,
    runtime=snakemake.params.runtime,
    threads=snakemake.threads,
    template_date=snakemake.params.template_date,
    outputs={key: snakemake.output[key] for key in ("train", "validation", "heldout", "directions")},
)
