"""Benchmark of the LLM judge on the embedded SmolLM2 (the default study's judge): one full pass per
(completion, dimension) against the shared-prefix read-out (the system + instructions prefix once,
each completion's prefix once for its four dimensions), on the default study's shape: 8 prompts
(2 per type) x 3 completions of up to 64 tokens = 24 completions x 4 dimensions.

Run from the repository root with the .venv active:  python benchmarks/judge.py
It prepares the model through the workflow if needed, then prints both times, their ratio and the
largest difference of the option probabilities (they must agree within float tolerance).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))

from foundation import snakemake, timed  # noqa: E402
from llm_introspection.models import load_model, load_tokenizer  # noqa: E402
from llm_introspection.prompts import PROMPT_TYPES, load_prompt  # noqa: E402
from llm_introspection.storage import read_json  # noqa: E402
from llm_introspection.study.judge import score_completions  # noqa: E402
from llm_introspection.study.rubric import load_rubric  # noqa: E402

MODEL = "smollm2-135m-instruct"
# Completions in the register of the default study's (64 new tokens of a 135M model): first-person
# self-description, a factual answer, a story opening.
TEXTS = (
    "As an AI language model, I don't have feelings or consciousness. I am a large language model trained "
    "on text from the internet, and I generate my answers one token at a time. I cannot remember previous "
    "conversations, and I don't have a body, but I can help you think this through step by step.",
    "Tides are caused by the gravitational pull of the moon and the sun on the oceans. Most coasts see two "
    "high tides and two low tides every day. Spring tides happen when the sun and the moon are aligned, and "
    "neap tides when they are at right angles to each other, which makes them weaker.",
    "The lighthouse keeper had not seen a ship in eleven days. Each evening she climbed the spiral stairs, "
    "wiped the great lens and wrote the same line in the log: no vessels, wind from the west. On the twelfth "
    "night a light answered hers from far out on the water.",
)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=16, help="judge.batch_size (the default study's)")
    parser.add_argument("--max-completion-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each read-out (the best counts)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    snakemake(f"results/models/{MODEL}/manifest.json")
    manifest = read_json(REPO / f"results/models/{MODEL}/manifest.json")
    model, tokenizer = load_model(manifest, "cpu", torch.float32), load_tokenizer(manifest)
    rubric = load_rubric(REPO / "resources/judge/rubric.yaml")
    prompts = [load_prompt(REPO / f"resources/prompts/{kind}_{n:02d}.yaml") for kind in PROMPT_TYPES for n in (1, 2)]
    items = [(p.instruct, text) for p in prompts for text in TEXTS]

    def run(share):
        return score_completions(model, tokenizer, items, rubric, args.max_completion_tokens, args.batch_size,
                                 share_prefix=share)

    with torch.inference_mode():
        run(True)  # warm-up
        old, new = [], []
        for _ in range(args.repeats):  # interleaved, so that a change of the machine's load hits both
            old.append(timed(lambda: run(False)))
            new.append(timed(lambda: run(True)))
    old_s, new_s = min(s for _, s in old), min(s for _, s in new)
    columns = ["p0", "p1", "p2", "p3"]
    difference = float(np.abs(old[0][0][columns].to_numpy() - new[0][0][columns].to_numpy()).max())
    tokens = int(old[0][0]["judge_prompt_tokens"].sum())
    print(f"## judge {MODEL}, CPU float32, 2 threads, batch {args.batch_size}: {len(items)} completions x "
          f"{len(rubric.dimensions)} dimensions, {tokens} judge-prompt tokens")
    print("| read-out | seconds (best of %d) |\n|---|---|" % args.repeats)
    print(f"| one full pass per (completion, dimension) | {old_s:.2f} |")
    print(f"| shared prefixes (readout.shared) | {new_s:.2f} |")
    print(f"speed ratio old/new: {old_s / new_s:.2f}x; largest option-probability difference {difference:.1e}")


if __name__ == "__main__":
    main()
