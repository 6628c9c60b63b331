"""Benchmark: finished sequences leaving the sampling batch (sampling.COMPACT_BELOW) against keeping
them to the end, on a randomly initialised llama built here (no download).

Run from the repository root with the .venv active:  python benchmarks/compaction.py
A set of `--eos-share` of the vocabulary ends a sequence, so lengths spread as real completions'
do (geometric). Prints the measured time of each way, their ratio, the share of row-steps that were
live, and whether the two ways drew the same tokens.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from llm_introspection.sampling import COMPACT_BELOW, SamplingParams, sample_completions  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--eos-share", type=float, default=0.015)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(2)
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=8, num_key_value_heads=4, vocab_size=8192)
    model = LlamaForCausalLM(config).eval()
    eos = set(range(1, 1 + int(args.eos_share * config.vocab_size)))
    prompts = [[5 + i % 7, 9, 11, 13 + i % 3] for i in range(args.batch)]
    seeds = list(range(args.batch))
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens)
    results, times = {}, {}
    for name, compact in (("kept to the end", None), (f"leave at <= {COMPACT_BELOW} live", COMPACT_BELOW)):
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            results[name] = sample_completions(model, prompts, seeds, params, eos, 0, args.batch, 10, compact=compact)
            best = min(best, time.perf_counter() - started)
        times[name] = best
    lengths = [len(c.token_ids) for c in next(iter(results.values()))]
    live_share = sum(lengths) / (len(lengths) * max(lengths))
    same = sum(a.token_ids == b.token_ids for a, b in zip(*results.values()))
    for name, seconds in times.items():
        print(f"{name:>24}: {seconds:.2f} s")
    kept, compacted = times.values()
    print(f"batch {args.batch}, completion lengths {min(lengths)}-{max(lengths)} (mean {sum(lengths) / len(lengths):.0f}), "
          f"live share of row-steps {live_share:.2f}; compacted / kept time {compacted / kept:.2f}; "
          f"identical completions {same}/{len(lengths)}")


if __name__ == "__main__":
    main()
