"""Benchmark of the study statistics on a synthetic table of the original study's size.

Run from the repository root with the .venv active:  python benchmarks/statistics_stage.py
4 families x 2 sizes x base/instruct = 16 models (8 model pairs), x 40 prompts x 10 reps = 6,400
completions, 3 dimensions scored 0-3 by the keyword coder and the judge, with family, model and
prompt random effects; prints the wall time of each part and the headline rows per unit.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from llm_introspection.study.clustered import clustered_statistics, crossed_mixed_effects  # noqa: E402
from llm_introspection.study.statistics import agreement, content_statistics, mixed_effects, scaling  # noqa: E402
from llm_introspection.study.synthetic import study_table  # noqa: E402

DIMENSIONS = ("self_reference", "meta_cognition", "hedging")


def synthetic_study(seed=0):
    """Integer 0-3 keyword scores with an instruct effect on self-reference prompts, and judge
    scores one level off a fifth of the time."""
    rng = np.random.default_rng([seed, 2])
    table = study_table(seed, families=4, sizes=(1.5, 7.0), prompts_per_type=10, reps=10, dimensions=DIMENSIONS,
                        baseline=0.5, instruct_effect=0.8, effect_prompt_types=("self_reference",), family_sd=0.3,
                        model_sd=0.2, prompt_sd=0.3, noise_sd=0.8, integer_scores=True)
    for dimension in DIMENSIONS:
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
    clustered = timed("clustered_statistics (3 dimensions)",
                      lambda: clustered_statistics(table, DIMENSIONS, args.resamples, seed=0), timings)
    fits = timed("mixed_effects (3 models x 3 dimensions)",
                 lambda: {d: mixed_effects(table, d) for d in DIMENSIONS}, timings)
    crossed = timed("crossed_mixed_effects (3 dimensions)",
                    lambda: {d: crossed_mixed_effects(table, d)["instruct_crossed"] for d in DIMENSIONS}, timings)
    timed("agreement (3 dimensions)",
          lambda: {d: agreement(table[d], table[f"judge_{d}"]) for d in DIMENSIONS}, timings)
    timed("scaling (3 dimensions)", lambda: {d: scaling(table, d, args.resamples) for d in DIMENSIONS}, timings)
    print(f"{'total':<40} {sum(timings.values()):7.2f} s")
    both = pd.concat([stats, clustered])
    columns = ["headline", "unit", "diff", "diff_low", "diff_high", "ratio", "ratio_low", "ratio_high", "p_holm"]
    print(both[both["headline"] != ""][columns].to_string(index=False))
    for name, fit in (("family intercept", fits["self_reference"]["instruct"]), ("crossed", crossed["self_reference"])):
        instruct = fit["coefficients"]["instruct"]
        print(f"mixed model self_reference ~ instruct ({name}): {instruct['coef']:.3f} "
              f"[{instruct['ci_low']:.3f}, {instruct['ci_high']:.3f}]")


if __name__ == "__main__":
    main()
