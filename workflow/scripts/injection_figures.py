import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the llm_introspection library

from llm_introspection.report.figures import run_injection_figures

run_injection_figures(dict(snakemake.input.items()), dict(snakemake.output.items()))
