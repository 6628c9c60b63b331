import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the llm_introspection library

from llm_introspection.selfknowledge.statistics import run_selfknowledge_statistics
from llm_introspection.storage import remove_stale_temporaries

remove_stale_temporaries(snakemake.output)  # what a killed run of this job left
run_selfknowledge_statistics(
    dict(snakemake.input.items()),
    dict(snakemake.output.items()),
    snakemake.params.models,
    snakemake.params.settings,
)
