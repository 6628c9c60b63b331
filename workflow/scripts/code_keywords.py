import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the llm_introspection library

from llm_introspection.analysis import run_keyword_coding

run_keyword_coding(
    generation_paths=snakemake.input.generations,
    lexicon_path=snakemake.input.lexicon,
    schema_path=snakemake.params.schema,
    output_path=snakemake.output[0],
)
