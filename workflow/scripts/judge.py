import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the llm_introspection library

from llm_introspection.jobs import run_judge
from llm_introspection.storage import remove_stale_temporaries

remove_stale_temporaries(snakemake.output)  # what a killed run of this job left
run_judge(
    manifest_path=snakemake.input.manifest,
    generation_paths=snakemake.input.generations,
    prompt_paths=snakemake.input.prompts,
    rubric_path=snakemake.input.rubric,
    output_path=snakemake.output[0],
    settings={"judge": snakemake.params.judge, "runtime": snakemake.params.runtime},
    threads=snakemake.threads,
    template_date=snakemake.params.template_date,
)
