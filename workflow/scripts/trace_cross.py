import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the llm_introspection library

from llm_introspection.jobs import job_settings, run_trace_cross

run_trace_cross(
    manifest_path=snakemake.input.manifest,
    generation_paths=snakemake.input.generations,
    activation_paths=snakemake.output.activations,
    settings={"trace": snakemake.params.trace, "runtime": runtime, "plan": plan},
    threads=snakemake.threads,
)
