import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from llm_introspection.jobs import run_prepare

run_prepare(snakemake.wildcards.model, snakemake.params.spec, snakemake.output.manifest)
