import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the llm_introspection library

from llm_introspection.study.analysis import run_embeddings

run_embeddings(snakemake.input.activations, snakemake.output[0], snakemake.params.seed)
