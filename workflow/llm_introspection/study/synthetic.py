"""Synthetic study tables: the core study's design with planted effects, for tests and benchmarks.

A latent score per completion is baseline + instruct effect (instruct models, on the prompt types
`effect_prompt_types`) + family, model and prompt intercepts + a prompt-specific instruct effect
(instruct models only) + noise, all normal with mean 0; `integer_scores` rounds and clips it to the
keyword coder's 0-3 levels. `population_means` gives the means over the population these tables are
drawn from, the value a CI should cover.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from ..prompts import PROMPT_TYPES

LEVELS = (0, 1, 2, 3)


def study_table(seed: int, families: int = 6, sizes: tuple[float, ...] = (1.0, 3.0), prompts_per_type: int = 10,
                reps: int = 3, *, dimensions: tuple[str, ...] = ("self_reference",), baseline: float = 1.0,
                instruct_effect: float = 0.0, effect_prompt_types: tuple[str, ...] = PROMPT_TYPES,
                family_sd: float = 0.5, model_sd: float = 0.0, prompt_sd: float = 0.0, prompt_effect_sd: float = 0.0,
                noise_sd: float = 1.0, integer_scores: bool = False) -> pd.DataFrame:
    """One row per family x size x variant x prompt x rep with the design columns and one score per dimension.

    The random effects are shared by the dimensions, the noise is not. Family intercepts and noise
    come from `seed`'s stream in that order, the other random effects from a second stream, so
    switching one on leaves the rest of a table unchanged.
    """
    rng, extra = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    family_names = [f"F{i}" for i in range(families)]
    prompts = [f"{t}_{i:02d}" for t in PROMPT_TYPES for i in range(prompts_per_type)]
    shape = (families, len(sizes), 2, len(prompts), reps)
    family, size, variant, prompt, rep = (axis.ravel() for axis in np.indices(shape))
    model = (family * len(sizes) + size) * 2 + variant
    model_names = [f"{f}-{s}-{v}" for f in family_names for s in sizes for v in ("base", "instruct")]
    prompt_types = np.repeat(PROMPT_TYPES, prompts_per_type)
    table = pd.DataFrame({
        "family": np.array(family_names)[family], "size_b": np.asarray(sizes, dtype=float)[size],
        "variant": np.array(["base", "instruct"])[variant], "prompt_id": np.array(prompts)[prompt], "rep": rep,
        "model": np.array(model_names)[model], "prompt_type": prompt_types[prompt], "condition": "native",
    })
    instruct = variant == 1
    family_effect = rng.normal(0, family_sd, families)[family]
    model_effect = extra.normal(0, model_sd, len(model_names))[model]
    prompt_effect = extra.normal(0, prompt_sd, len(prompts))[prompt]
    prompt_instruct = extra.normal(0, prompt_effect_sd, len(prompts))[prompt]
    latent = (baseline + family_effect + model_effect + prompt_effect + instruct * prompt_instruct
              + instruct_effect * (instruct & np.isin(prompt_types, effect_prompt_types)[prompt]))
    for dimension in dimensions:
        score = latent + rng.normal(0, noise_sd, len(table))
        table[dimension] = np.clip(np.round(score), LEVELS[0], LEVELS[-1]) if integer_scores else score
    return table


def population_means(*, baseline: float = 1.0, instruct_effect: float = 0.0, family_sd: float = 0.5,
                     model_sd: float = 0.0, prompt_sd: float = 0.0, prompt_effect_sd: float = 0.0,
                     noise_sd: float = 1.0, integer_scores: bool = False, **design: Any) -> dict[str, float]:
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
