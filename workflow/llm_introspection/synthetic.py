"""Synthetic study tables: the core study's design with planted effects, for tests and benchmarks.

A latent score per completion is baseline + instruct effect (instruct models, on the prompt types
`effect_prompt_types`) + family, model and prompt intercepts + a prompt-specific instruct effect
(instruct models only) + noise, all normal with mean 0; `integer_scores` rounds and clips it to the
keyword coder's 0-3 levels. `population_means` gives the means over the population these tables are
drawn from, the value a CI should cover.
"""

import numpy as np
import pandas as pd
from scipy.stats import norm

from .prompts import PROMPT_TYPES

LEVELS = (0, 1, 2, 3)


def study_table(seed: int, families: int = 6, sizes: tuple = (1.0, 3.0), prompts_per_type: int = 10, reps: int = 3,
                *, dimensions: tuple = ("self_reference",), baseline: float = 1.0, instruct_effect: float = 0.0,
                effect_prompt_types: tuple = PROMPT_TYPES, family_sd: float = 0.5, model_sd: float = 0.0,
                prompt_sd: float = 0.0, prompt_effect_sd: float = 0.0, noise_sd: float = 1.0,
                integer_scores: bool = False) -> pd.DataFrame:
    """One row per family x size x variant x prompt x rep with the design columns and one score per dimension.

    The random effects are shared by the dimensions, the noise is not. Family intercepts and noise
    come from `seed`'s stream in that order, the other random effects from a second stream, so
    switching one on leaves the rest of a table unchanged.
    """
    rng, extra = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    prompts = [f"{t}_{i:02d}" for t in PROMPT_TYPES for i in range(prompts_per_type)]
    index = pd.MultiIndex.from_product(
        [[f"F{i}" for i in range(families)], sizes, ["base", "instruct"], prompts, range(reps)],
        names=["family", "size_b", "variant", "prompt_id", "rep"])
    table = index.to_frame(index=False)
    table["model"] = table["family"] + "-" + table["size_b"].astype(str) + "-" + table["variant"]
    table["prompt_type"] = table["prompt_id"].str.rsplit("_", n=1).str[0]
    table["condition"] = "native"
    instruct = (table["variant"] == "instruct").to_numpy()
    family_effect = table["family"].map(dict(zip(table["family"].unique(), rng.normal(0, family_sd, families))))
    models, prompt_ids = table["model"].unique(), table["prompt_id"].unique()
    model_effect = table["model"].map(dict(zip(models, extra.normal(0, model_sd, len(models)))))
    prompt_effect = table["prompt_id"].map(dict(zip(prompt_ids, extra.normal(0, prompt_sd, len(prompt_ids)))))
    prompt_instruct = table["prompt_id"].map(dict(zip(prompt_ids, extra.normal(0, prompt_effect_sd, len(prompt_ids)))))
    latent = (baseline + family_effect + model_effect + prompt_effect + instruct * prompt_instruct
              + instruct_effect * (instruct & table["prompt_type"].isin(effect_prompt_types).to_numpy()))
    for dimension in dimensions:
        score = latent + rng.normal(0, noise_sd, len(table))
        table[dimension] = np.clip(np.round(score), LEVELS[0], LEVELS[-1]) if integer_scores else score
    return table


def population_means(*, baseline: float = 1.0, instruct_effect: float = 0.0, family_sd: float = 0.5,
                     model_sd: float = 0.0, prompt_sd: float = 0.0, prompt_effect_sd: float = 0.0,
                     noise_sd: float = 1.0, integer_scores: bool = False, **design) -> dict:
    """Population mean of the base and of the instruct scores on a prompt type with the effect.

    Takes study_table's keywords (the design sizes in `design` do not matter). The latent score is
    normal, so the mean of its 0-3 coding is sum over levels k >= 1 of P(latent >= k - 1/2).
    """
    base_variance = family_sd**2 + model_sd**2 + prompt_sd**2 + noise_sd**2
    latent = {"base": (baseline, base_variance),
              "instruct": (baseline + instruct_effect, base_variance + prompt_effect_sd**2)}
    if not integer_scores:
        return {variant: mean for variant, (mean, _) in latent.items()}
    return {variant: float(sum(norm.sf(level - 0.5, mean, np.sqrt(variance)) for level in LEVELS[1:]))
            for variant, (mean, variance) in latent.items()}
