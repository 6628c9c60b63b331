import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the llm_introspection library

from llm_introspection.study.analysis import run_code_keywords
from llm_introspection.storage import remove_stale_temporaries

remove_stale_temporaries(snakemake.output)  # what a killed run of this job left
run_code_keywords(
    generation_paths=snakemake.input.generations,
    lexicon_path=snakemake.input.lexicon,
    output_path=snakemake.output[0],
)
