import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the llm_introspection library

from llm_introspection.selfknowledge.jobs import run_selfknowledge
from llm_introspection.storage import remove_stale_temporaries

remove_stale_temporaries(snakemake.output)  # what a killed run of this job left
run_selfknowledge(
    manifest_path=snakemake.input.manifest,
    evaluation=snakemake.wildcards.evaluation,
    output_path=snakemake.output[0],
    settings=snakemake.params.settings,
    resources=snakemake.params.resources,
    runtime=snakemake.params.runtime,
    threads=snakemake.threads,
    template_date=snakemake.params.template_date,
)
