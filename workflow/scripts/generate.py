import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the llm_introspection library

from llm_introspection.jobs import job_settings
from llm_introspection.jobs import run_generate
from llm_introspection.storage import remove_stale_temporaries

remove_stale_temporaries(snakemake.output)  # what a killed run of this job left
runtime, plan = job_settings(snakemake.params.runtime, snakemake.config)  # + batch planning keys
run_generate(
    manifest_path=snakemake.input.manifest,
    prompt_paths=snakemake.input.prompts,
    generation_paths=snakemake.output.generations,
    entropy_paths=snakemake.output.entropy,
    study=snakemake.params.study,
    settings={"generation": snakemake.params.generation, "runtime": runtime, "plan": plan},
    threads=snakemake.threads,
    template_date=snakemake.params.template_date,
)
