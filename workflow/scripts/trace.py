import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the llm_introspection library

from llm_introspection.jobs import job_settings
from llm_introspection.jobs import run_trace
from llm_introspection.storage import remove_stale_temporaries

remove_stale_temporaries(snakemake.output)  # what a killed run of this job left
runtime, plan = job_settings(snakemake.params.runtime, snakemake.config)  # + batch planning keys
run_trace(
    manifest_path=snakemake.input.manifest,
    generation_paths=snakemake.input.generations,
    activation_paths=snakemake.output.activations,
    settings={"trace": snakemake.params.trace, "runtime": runtime, "plan": plan},
    threads=snakemake.threads,
)
