import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the llm_introspection library

from llm_introspection.injection_jobs import run_injection_cell

run_injection_cell(
    manifest_path=snakemake.input.manifest,
    vector_path=snakemake.input.vectors,
    experiment=snakemake.wildcards.experiment,
    strength=float(snakemake.wildcards.strength),
    output_path=snakemake.output[0],
    settings=snakemake.params.injection,
    generation=snakemake.params.generation,
    schema_dir=snakemake.params.schema_dir,
    runtime=snakemake.params.runtime,
    threads=snakemake.threads,
)
