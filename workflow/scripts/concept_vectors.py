import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the llm_introspection library

from llm_introspection.injection.jobs import run_concept_vectors
from llm_introspection.storage import remove_stale_temporaries

remove_stale_temporaries(snakemake.output)  # what a killed run of this job left
run_concept_vectors(
    manifest_path=snakemake.input.manifest,
    layer_fractions=snakemake.params.layers,
    vector_paths=list(snakemake.output),
    settings=snakemake.params.settings,
    resources=snakemake.params.resources,
    runtime=snakemake.params.runtime,
    threads=snakemake.threads,
    template_date=snakemake.params.template_date,
)
