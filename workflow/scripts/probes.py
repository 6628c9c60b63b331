import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the llm_introspection library

from llm_introspection.study.analysis import run_probes
from llm_introspection.storage import remove_stale_temporaries

remove_stale_temporaries(snakemake.output)  # what a killed run of this job left
run_probes(
    activation_paths=snakemake.input.activations,
    cross_paths=snakemake.input.cross,
    noise_paths=snakemake.input.noise,
    coding_paths=snakemake.input.coding,
    judge_paths=snakemake.input.judge,
    outputs=dict(snakemake.output.items()),
    settings=snakemake.params.probing,
)
