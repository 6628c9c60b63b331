"""Benchmark of the study statistics on a synthetic table of the original study's size.

Run from the repository root with the .venv active:  python benchmarks/statistics_stage.py
4 families x 2 sizes x base/instruct = 16 models, x 40 prompts x 10 reps = 6,400 completions,
3 dimensions scored 0-3 by the keyword coder and the judge; prints the wall time of each part.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from llm_introspection.prompts import PROMPT_TYPES  # noqa: E402
from llm_introspection.study.statistics import agreement, content_statistics, mixed_effects, scaling  # noqa: E402

DIMENSIONS = ("self_reference", "meta_cognition", "hedging")


def synthetic_study(seed=0, families=4, sizes=(1.5, 7.0), prompts_per_type=10, reps=10):
    """Integer 0-3 keyword and judge scores with family intercepts and an instruct effect on self-reference."""
    rng = np.random.default_rng(seed)
    prompts = [f"{t}_{i:02d}" for t in PROMPT_TYPES for i in range(prompts_per_type)]
    index = pd.MultiIndex.from_product(
        [[f"family{i}" for i in range(families)], sizes, ["base", "instruct"], prompts, range(reps)],
        names=["family", "size_b", "variant", "prompt_id", "rep"])
    table = index.to_frame(index=False)
    table["model"] = table["family"] + "-" + table["size_b"].astype(str) + "b-" + table["variant"]
    table["prompt_type"] = table["prompt_id"].str.rsplit("_", n=1).str[0]
    instruct = (table["variant"] == "instruct").to_numpy()
    on_self_reference = (table["prompt_type"] == "self_reference").to_numpy()
    family_effect = table["family"].map(dict(zip(table["family"].unique(), rng.normal(0, 0.3, families))))
    for dimension in DIMENSIONS:
        latent = 0.5 + family_effect + 0.8 * instruct * on_self_reference + rng.normal(0, 0.8, len(table))
        table[dimension] = np.clip(np.round(latent), 0, 3).astype(int)
        table[f"judge_{dimension}"] = np.clip(table[dimension] + rng.choice([-1, 0, 0, 0, 1], len(table)), 0, 3)
    return table


def timed(label, function, timings):
    started = time.perf_counter()
    result = function()
    timings[label] = time.perf_counter() - started
    print(f"{label:<40} {timings[label]:7.2f} s", flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=10000)
    args = parser.parse_args()
    table = synthetic_study()
    print(f"{len(table)} completions, {table['model'].nunique()} models, {len(DIMENSIONS)} dimensions, "
          f"{args.resamples} bootstrap resamples")
    timings = {}
    stats = timed("content_statistics (3 dimensions)",
                  lambda: content_statistics(table, DIMENSIONS, args.resamples, seed=0), timings)
    fits = timed("mixed_effects (3 models x 3 dimensions)",
                 lambda: {d: mixed_effects(table, d) for d in DIMENSIONS}, timings)
    timed("agreement (3 dimensions)",
          lambda: {d: agreement(table[d], table[f"judge_{d}"]) for d in DIMENSIONS}, timings)
    timed("scaling (3 dimensions)", lambda: {d: scaling(table, d, args.resamples) for d in DIMENSIONS}, timings)
    print(f"{'total':<40} {sum(timings.values()):7.2f} s")
    headline = stats[stats["headline"] != ""][["headline", "ratio", "ratio_low", "ratio_high", "cohens_d", "p_holm"]]
    print(headline.to_string(index=False))
    instruct = fits["self_reference"]["instruct"]["coefficients"]["instruct"]
    print(f"mixed model self_reference ~ instruct: {instruct['coef']:.3f} "
          f"[{instruct['ci_low']:.3f}, {instruct['ci_high']:.3f}]")


if __name__ == "__main__":
    main()
