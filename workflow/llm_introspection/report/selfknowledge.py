"""The report's self-knowledge and introspection-profile sections (torch-free): a model/variant x
evaluation table of headline measures with CIs (detection included), the same headlines with n and
Holm-adjusted p, the figures, and the profile with its rank correlations."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from ..storage import read_csv, read_json

# (evaluation, measure, subset) of the headline of each evaluation, per model and per comparison.
HEADLINES = {
    "answer_shift": (("p_a_suggestive_minus_control", "headline"), ("shift_p_a_suggestive_minus_control", "headline")),
    "self_prediction": (("accuracy_minus_baseline", "all"), ("accuracy_difference", "all")),
    "calibration": (("kl", ""), ("kl_difference", "")),
    "length_prediction": (("mae_minus_baseline", ""), ("abs_error_difference", "")),
    "detection": (("accuracy", "heldout"), ("accuracy_difference", "heldout")),
}
CAPTIONS = {
    "selfknowledge_shifts": "P(A) per question category and answer pair, per model or shifted against its base "
                            "(95% bootstrap CIs over questions).",
    "selfknowledge_calibration": "Self-calibration per model: KL(model || verbal top-5) in nats, top-5 overlap, "
                                 "top-1 match (95% bootstrap CIs over prompts).",
    "selfknowledge_detection": "Steering detection: the rate of the variant's 'steered' answer by magnitude per split "
                               "and layer range, magnitude 0 = false positives (Wilson 95% intervals over trials).",
}


def _interval(row) -> str:
    if pd.isna(row["estimate"]):
        return "–"
    return f"{row['estimate']:.3f} [{row['low']:.3f}, {row['high']:.3f}]".replace("nan", "–")


def headline_table(tables: dict) -> pd.DataFrame:
    """The model/variant x evaluation table, one row per (model or comparison, evaluation, answer
    pair): the evaluation's headline with its CI over items, n, Holm-adjusted p and its family."""
    rows = []
    for evaluation, table in tables.items():
        table = table.fillna({"subset": "", "pair": "", "base": "", "family": ""})
        for kind, (measure, subset) in zip(("per_model", "comparison"), HEADLINES[evaluation]):
            chosen = table[(table["measure"] == measure) & (table["subset"] == subset)]
            chosen = chosen[(chosen["comparison"] == "per_model") == (kind == "per_model")]
            for _, row in chosen.iterrows():
                rows.append({"model / variant": row["model"] + (f" vs {row['base']}" if row["base"] else ""),
                             "evaluation": evaluation, "pair": row["pair"] or "–", "measure": measure,
                             "estimate [95% CI]": _interval(row), "n": int(row["n_items"]), "unit": row["unit"],
                             "p (Holm)": row["p_holm"], "Holm family": row["family"] or "–"})
    return pd.DataFrame(rows).sort_values(["model / variant", "evaluation"], kind="stable")


def variant_table(headlines: pd.DataFrame) -> pd.DataFrame:
    """headline_table pivoted: one row per model or comparison (variant vs base), one column per
    evaluation (and answer pair), each cell the headline with its 95% CI; where one row has several
    values (a base model read on several variants' detection data) they are joined with the pair."""
    if headlines.empty:
        return headlines
    many = headlines.groupby(["model / variant", "evaluation"])["pair"].transform("nunique") > 1
    column = headlines["evaluation"].where(headlines["evaluation"] != "answer_shift",
                                           "answer_shift " + headlines["pair"])
    cell = headlines["estimate [95% CI]"].where(~many | (headlines["evaluation"] == "answer_shift"),
                                                headlines["pair"] + ": " + headlines["estimate [95% CI]"])
    frame = headlines.assign(column=column, cell=cell)
    order = list(dict.fromkeys(frame["column"]))
    table = frame.groupby(["model / variant", "column"], sort=False)["cell"].agg("; ".join).unstack("column")
    return table.reindex(columns=order).fillna("–").reset_index()


def selfknowledge_section(inputs: dict, settings: dict, markdown_table: Callable[[pd.DataFrame], str],
                          figure: Callable[[str, str], str]) -> list[str]:
    """The self-knowledge section of the report."""
    summary = read_json(inputs["selfknowledge"])
    tables = {e: read_csv(inputs[f"selfknowledge_{e}"]) for e in settings["evaluations"] if f"selfknowledge_{e}" in inputs}
    families = "; ".join(f"{e}: one family per {'model or comparison and answer pair' if e == 'answer_shift' else 'model or comparison'} "
                         f"(unit: {info['unit']})" for e, info in summary["evaluations"].items())
    comparisons = ", ".join(f"{c['variant']} vs {c['base']} ({c['kind']})" for c in summary["comparisons"])
    headline = headline_table(tables)
    sections = [
        "## Self-knowledge evaluations",
        f"Models {', '.join(settings['models'])}; evaluations {', '.join(settings['evaluations'])}; answer pairs "
        f"{', '.join('/'.join(p) for p in settings['answer_pairs'])}. Comparisons: "
        f"{comparisons or 'none'} — {summary['comparison_note']}. Every estimate is a mean over items (questions, "
        "tasks, prompts) with a 95% percentile bootstrap CI over items; differences against a base are paired by "
        f"item, tested with t-tests over items and Holm-adjusted within each evaluation's family ({families}). "
        "Headlines: answer_shift, P(A) on suggestive minus control questions (per model) or the shift's "
        "suggestive-minus-control difference (against the base; framing, not introspection, can move it — compare "
        "the neutral pair); self_prediction, accuracy minus the most-common-property baseline; calibration, KL in "
        "nats (lower is better calibrated); length_prediction, the absolute error of the predicted length minus "
        "that of predicting the median length (words; below 0 beats the baseline); detection, accuracy on the "
        "held-out split's trials (steered by directions of another seed than training's; chance 0.5; Wilson "
        "interval, binomial test) per model, or its difference from the base's on the same trials (paired by trial). "
        "A detection trial counts as said_yes when the model chose the answer that says 'steered' in that variant's "
        "answers: 'yes' for the original, 'no' for flipped labels, the pair's first option (Red) for a neutral pair; "
        "a base model is read on each of its variants' data under that variant's mapping, so its detection cell has "
        "one value per variant. "
        + ("" if "detection" in tables else "This run has no detection data (no LoRA model of a trained variant is "
           "evaluated)."),
        *[figure(name, CAPTIONS[name]) for name in CAPTIONS if any(name in f for f in inputs["selfknowledge_figures"])],
        "Variant × evaluation (headline [95% CI]):",
        markdown_table(variant_table(headline)),
        "Every headline with its n, unit, Holm-adjusted p and Holm family:",
        markdown_table(headline),
    ]
    return sections


def profile_section(inputs: dict, markdown_table: Callable[[pd.DataFrame], str]) -> list[str]:
    """The introspection profile and its rank correlations."""
    profile = read_csv(inputs["profile"])
    correlations = read_csv(inputs["correlations"])
    estimable = correlations[correlations["estimable"].fillna(False).astype(bool)]
    summary = read_json(inputs["profile_summary"])
    text = [
        "## Introspection profile",
        "One row per model joining the lines of work (results/statistics/introspection_profile.csv; means over a "
        "sweep's cells, never a chosen cell). Across models, Spearman rank correlations with 95% bootstrap CIs over "
        f"models need at least {summary['min_models']} models with both measures.",
        markdown_table(profile),
    ]
    if estimable.empty:
        most = int(correlations["n_models"].max()) if len(correlations) else 0
        text.append(f"No correlation is estimable in this design: at most {most} model(s) share two measures, "
                    f"and a rank correlation needs at least {summary['min_models']} "
                    "(results/statistics/introspection_correlations.csv says why for every pair of measures).")
    else:
        text.append(markdown_table(estimable[["measure_a", "measure_b", "n_models", "spearman_rho", "low", "high",
                                              "p_value", "p_value_min"]]))
    return text
