import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from llm_introspection.jobs import run_trace

run_trace(
    manifest_path=snakemake.input.manifest,
    generation_paths=snakemake.input.generations,
    activation_paths=snakemake.output.activations,
    settings={"trace": snakemake.params.trace, "runtime": snakemake.params.runtime},
    threads=snakemake.threads,
)
