"""results/report.md: the design, every headline number with its CI and control, the figures,
and the caveats the data demand, written from the workflow's own output files."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..registry import EXPERIMENTS
from ..prompts import PROMPT_TYPES
from ..storage import read_csv, read_json, versions, write_text
from ..study.analysis import describe_by_model
from ..study.coding import DIMENSIONS, labelled_agreement, load_labelled_examples, load_lexicon
from ..study.rubric import DIMENSIONS as JUDGE_DIMENSIONS
from .selfknowledge import profile_section, selfknowledge_section

INJECTION_FIGURE_CAPTIONS = (
    ("injection_sweep", "Headline rate by strength (Wilson CIs); dashed: control; dotted: chance."),
    ("injection_heatmaps", "Headline estimate over layer x strength."),
    ("localization_answers", "Localization answers per injected sentence (diagonal = correct)."),
)


def _number(value, digits=2):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _interval(mean, low, high, digits=2):
    """'mean [low, high]', or a dash when the estimate is missing."""
    if mean is None or pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f} [{_number(low, digits)}, {_number(high, digits)}]"


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a GitHub-flavoured markdown table (cells as given, floats rounded)."""
    cells = frame.map(lambda v: _number(v, 3) if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def _figure(name, caption):
    return f"![{caption}](figures/{name}.png)\n\n*{caption}*"


def _design(settings, models, coded):
    generation = settings["generation"]
    prompts = coded.drop_duplicates("prompt_id")["prompt_type"].value_counts()
    table = pd.DataFrame([{
        "model": m["name"], "family": m["family"], "size (B)": m["size_b"], "variant": m["variant"],
        "frame": m["frame"], "source": _source(m["source"]), "revision": str(m["revision"])[:19],
        "dtype": m["dtype"], "device": m["device"],
    } for m in models])
    shared = settings["conditions"]["shared_frame"]
    return "\n\n".join([
        "## Design",
        f"{prompts.sum()} prompts ({', '.join(f'{prompts[t]} {t}' for t in PROMPT_TYPES if t in prompts)}), "
        f"{generation['reps']} samples each (seed {generation['seed']} + sample index), up to "
        f"{generation['max_new_tokens']} new tokens at temperature {generation['temperature']}, top-p "
        f"{generation['top_p']}. Instruct models in their native frame receive the chat-templated request; base "
        "models a continuation frame that contains the request verbatim.",
        f"Shared-frame condition: {'on: every instruct model also ran as a `-base-frame` twin on the base models’ input text' if shared else 'off (`conditions.shared_frame`)'}.",
        markdown_table(table),
        f"Judge: `{settings['judge']['model']}` with the rubric `{settings['judge']['rubric']}`; bootstrap CIs use "
        f"{settings['statistics']['bootstrap_resamples']} resamples (seed {settings['statistics']['seed']}).",
    ])


def _source(source):
    name = source.get("id") or source.get("package") or source.get("path") or "random"
    return f"{source['kind']}: {Path(str(name)).name}"


def _headlines(content):
    rows = content[content["headline"].fillna("") != ""]
    table = pd.DataFrame([{
        "headline": r["label"], "unit": r["unit"], "condition": r["condition"],
        "n": f"{r['n_a']:.0f} vs {r['n_b']:.0f}",
        "means": f"{_number(r['mean_a'])} vs {_number(r['mean_b'])}",
        "ratio [95% CI]": _interval(r["ratio"], r["ratio_low"], r["ratio_high"]),
        "Cohen's d [95% CI]": _interval(r["cohens_d"], r["cohens_d_low"], r["cohens_d_high"]),
        "p (Holm)": _number(r["p_holm"], 3), "note": r["note"] if isinstance(r["note"], str) else "",
    } for _, r in rows.iterrows()])
    return ("## Headline results\n\nEach headline at two units: `completion` pools every sample (the original "
            "study's arithmetic, for comparison: its CIs are too narrow, since samples of one prompt and model are "
            "not independent) and the clustered unit (model pair x prompt, or model x prompt within base models), "
            "which resamples pairs and prompts and is the one to cite. Holm corrects within each unit and "
            "condition over the dimension x prompt-type comparisons.\n\n" + markdown_table(table))


def interval_table(described: pd.DataFrame, measures: Sequence[str], names: Sequence[str]) -> str:
    """Descriptive rows (model, prompt_type, dimension, mean_a with CI) as one row per model and
    prompt type, one 'mean [low, high]' column per measure."""
    cells = described.assign(cell=[_interval(r.mean_a, r.mean_a_low, r.mean_a_high) for r in described.itertuples()])
    wide = cells.pivot_table(index=["model", "prompt_type"], columns="dimension", values="cell", aggfunc="first")
    wide = wide.reindex(columns=list(measures)).rename(columns=dict(zip(measures, names))).reset_index()
    wide["prompt_type"] = pd.Categorical(wide["prompt_type"], PROMPT_TYPES)
    return markdown_table(wide.sort_values(["model", "prompt_type"]))


def _descriptives(table, measures, names, seed, n_resamples):
    return interval_table(describe_by_model(table, measures, n_resamples, seed), measures, names)


def _comparisons(content, title):
    rows = content[content["comparison"].str.startswith("instruct_vs_base")]
    estimable = rows[rows["n_a"] > 0]
    if estimable.empty:
        notes = sorted(set(rows["note"].dropna()))
        return f"{title}: not estimable ({'; '.join(notes)})."
    table = pd.DataFrame([{
        "dimension": r["dimension"], "prompt type": r["prompt_type"], "unit": r["unit"], "condition": r["condition"],
        "families": r["families_with_pairs"], "instruct − base [95% CI]": _interval(r["diff"], r["diff_low"], r["diff_high"]),
        "d [95% CI]": _interval(r["cohens_d"], r["cohens_d_low"], r["cohens_d_high"]),
        "p (Holm)": _number(r["p_holm"], 3),
    } for _, r in estimable.iterrows()])
    return f"{title}:\n\n" + markdown_table(table)


def _lexicon_agreement(examples_path, lexicon_path):
    """How well the lexicon codes the hand-labelled texts, per dimension and split."""
    examples, lexicon = load_labelled_examples(examples_path), load_lexicon(lexicon_path)
    rows = [labelled_agreement([e for e in examples if split in ("all", e["split"])], lexicon).assign(texts=split)
            for split in ("heldout", "all")]
    table = pd.concat(rows, ignore_index=True)[["texts", "dimension", "n", "spearman", "exact"]]
    return (f"The coder against the hand-labelled texts of `{examples_path}` (held-out: written before the lexicon's "
            "last revision; all: with the texts it was tuned on), Spearman rho and exact agreement:\n\n"
            + markdown_table(table.round(2)))


def _agreement(agreement):
    rows = []
    for dimension, result in agreement["dimensions"].items():
        a = result["all_models"]
        rows.append({
            "dimension": dimension, "n": a["n"], "Pearson r": a["pearson_r"], "Spearman ρ": a["spearman_rho"],
            "weighted κ": a["kappa_quadratic"], "ICC(2,1) [95% CI]": _interval(a["icc2_1"], a["icc2_1_low"], a["icc2_1_high"]),
            "exact": a["exact_agreement"], "within 1": a["within_one_agreement"],
        })
    return markdown_table(pd.DataFrame(rows))


def _probes(probing):
    selected = pd.DataFrame(probing["layer_selection"])
    selected = selected[selected["estimable"].astype(bool)] if len(selected) else selected
    if selected.empty:
        return "No probe was estimable."
    table = selected.assign(layers=selected["selected_index_a"].astype(int).astype(str) + ", "
                            + selected["selected_index_b"].astype(int).astype(str))
    table = table[["task", "subset", "layers", "held_out_accuracy", "max_over_layers"]]
    identity = probing["identity"]
    lines = [markdown_table(table.rename(columns={"layers": "layer chosen on each half", "held_out_accuracy": "held-out",
                                                  "max_over_layers": "max over layers (optimistic)"}))]
    if not identity["pairs"]:
        lines.append(f"Identical text and weight-difference calibration: {identity['identical_text']}.")
    elif isinstance(identity["weight_difference_calibration"]["by_layer"], list):
        margin = pd.DataFrame(identity["weight_difference_calibration"]["by_layer"])
        lines += ["Which model reads the base model's text (identical text) against the base model with weight noise "
                  "of the pair's difference (the floor two weight sets that far apart give):",
                  markdown_table(margin[["subset", "hidden_state_index", "accuracy_pair", "accuracy_noise", "margin"]])]
    added = pd.DataFrame(probing["self_reference_text"]["residual_over_text"])
    if len(added):
        lines += ["Self-reference probe (held-out layer) against a bag-of-token-ids baseline on the same completions, "
                  "and from the prompt's last position before generation:",
                  markdown_table(added[["subset", "held_out_accuracy", "text_only_accuracy",
                                        "pre_generation_held_out_accuracy", "activation_minus_text"]])]
    return "\n\n".join(lines)


def _not_estimable(probing, mixed, scaling):
    lines = [f"- probe `{r['task']}`{' (' + r['subset'] + ')' if r['subset'] else ''}: {r['reason']}"
             for r in probing["not_estimable"]]
    for dimension, fits in mixed["dimensions"].items():
        lines += [f"- mixed model `{name}` ({dimension}): {fit['reason']}" for name, fit in fits.items() if not fit["estimable"]]
    for dimension, parts in scaling["dimensions"].items():
        lines += [f"- scaling ({dimension}), family {s['family']}: {s['reason']}" for s in parts["skipped"]]
    return "\n".join(lines) if lines else "Every analysis was estimable."


def _scaling(scaling):
    rows = [{"dimension": d, **trend} for d, parts in scaling["dimensions"].items() for trend in parts["trends"]]
    if not rows:
        return "Scaling of the instruct − base gap: no family has two sizes with both variants."
    return "Within-family scaling of the instruct − base gap (Spearman over sizes):\n\n" + markdown_table(pd.DataFrame(rows))


def _mixed_effects(mixed):
    rows = []
    for dimension, fits in mixed["dimensions"].items():
        for name, fit in fits.items():
            if fit["estimable"]:
                for term, c in fit["coefficients"].items():
                    rows.append({"dimension": dimension, "model": name, "term": term,
                                 "coef [95% CI]": _interval(c["coef"], c["ci_low"], c["ci_high"]), "p": c["p"]})
    return markdown_table(pd.DataFrame(rows)) if rows else "No mixed-effects model was estimable (see below)."


def caveats(models: Sequence[Mapping[str, Any]], coded: pd.DataFrame, judged: pd.DataFrame, content: pd.DataFrame,
            settings: Mapping[str, Any]) -> list[str]:
    """The caveats this run's data demand, as sentences."""
    found = []
    if not (content["comparison"].eq("instruct_vs_base") & (content["n_a"] > 0)).any():
        found.append("No family has both a base and an instruct model: every difference between variants here is "
                     "confounded with family (architecture, tokenizer, training data), so no instruct-vs-base effect is "
                     "estimated; the per-model numbers are descriptive only.")
    small = [m["name"] for m in models if m["size_b"] < 1]
    if small:
        found.append(f"{len(small)} of {len(models)} models have under 1B parameters ({', '.join(small)}): they are not "
                     "expected to introspect; treat their scores as a test of the pipeline, not of the hypothesis.")
    per_type = coded.drop_duplicates("prompt_id")["prompt_type"].value_counts().min()
    found.append(f"{per_type} prompt(s) per type and {settings['generation']['reps']} samples per prompt: samples of "
                 "one prompt are not independent, so the prompt is the unit that limits generalisation (probe folds "
                 "are grouped by prompt; the mixed models' random effect is the family).")
    framed = coded[(coded["variant"] == "base") | (coded["condition"] == "shared_frame")]
    if not framed.empty:
        cut = framed["stop_reason"].eq("frame_end").groupby(framed["model"], sort=True).agg(cut="sum", n="size")
        found.append("Completions of a base frame end where the model starts the frame's next turn (a line that "
                     "begins with one of the prompt's `base_end_labels`, e.g. 'Interviewer:'): cut there were "
                     + ", ".join(f"{r.cut} of {r.n} ({r.model})" for r in cut.reset_index().itertuples())
                     + " (stop_reason frame_end); keywords, judge, trace and probes read only the text before the cut.")
    mass = judged[[f"judge_{d}_option_mass" for d in JUDGE_DIMENSIONS]].to_numpy().mean()
    found.append(f"The judge put on average {mass:.0%} of its next-token probability on the allowed answers 0-3; "
                 "scores are its expectation over those answers. A small judge is a weak rater: read the agreement "
                 "table before trusting its levels.")
    if settings["judge"]["model"] in set(coded["model"]):
        found.append(f"The judge ({settings['judge']['model']}) also rates its own completions.")
    truncated = int(judged["judge_truncated"].sum())
    if truncated:
        found.append(f"{truncated} completion(s) were truncated to fit the judge's context (flag `judge_truncated`).")
    found.append("A probe's majority baseline under prompt-grouped folds can fall below chance (the held-out "
                 "prompts' class is under-represented in training); compare accuracy with the shuffled-label "
                 "control, which uses the same folds.")
    return found


def _injection_rows(tables):
    """The headline rows of every injection experiment, beside the control they are read against."""
    rows = []
    for experiment, records in tables.items():
        if experiment not in EXPERIMENTS:
            continue
        table = pd.DataFrame(records)
        headline = EXPERIMENTS[experiment].headline
        if headline.by_kind:
            chosen = table[table["kind"].isin(["injected", "random"])]
        else:
            chosen = table[table["measure"].isin([headline.measure, headline.control, *headline.also])]
        for r in chosen.itertuples():
            label = f"{r.measure} ({r.question}, {r.kind})" if headline.by_kind else r.measure
            rows.append({"experiment": experiment, "model": r.model, "layer": r.layer, "strength": r.strength_relative,
                         "measure": label, "estimate [95% CI]": _interval(r.estimate, r.low, r.high),
                         "n": int(r.n), "chance": r.chance, "p vs chance (Holm, cell)": r.p_holm,
                         "p (Holm, sweep)": r.p_holm_sweep})
    return pd.DataFrame(rows)


def _injection(summary, settings, figures):
    tables = summary["tables"]
    margins = pd.DataFrame(tables.get("localization_margins", []))
    own = sorted({EXPERIMENTS[e].layers for e in settings["experiments"]} - {"layer_fractions"})  # own sweeps
    own_layers = "".join(f" ({', '.join(e for e in settings['experiments'] if EXPERIMENTS[e].layers == key)}: "
                         f"{settings[key]})" for key in own)
    sections = [
        "## Concept injection",
        f"Models {', '.join(settings['models'])}; {settings['vector_method']} vectors of the first "
        f"{settings['n_concepts']} concepts, injected at layer fractions {settings['layer_fractions']}{own_layers} with strengths "
        f"{settings['strengths']} x the layer's mean residual norm (first position excluded). Rates with Wilson "
        "intervals and differences with Newcombe's, both counting trials as independent; `_crossed` rows "
        "take concepts and wordings as crossed random units (a t interval and test that generalise to new "
        "concepts and wordings: the ones to cite). p against chance by exact binomial tests, Holm within "
        "each cell and over the sweep.",
        *[_figure(name, caption) for name, caption in figures],
        markdown_table(_injection_rows(tables)),
    ]
    if not margins.empty:
        margins = margins.assign(cell=[_interval(r.estimate, r.low, r.high) for r in margins.itertuples()])
        sections += ["Localization: the introspection question's accuracy minus each control (Newcombe intervals):",
                     markdown_table(margins[["model", "layer", "strength_relative", "question", "kind", "cell"]]
                                    .rename(columns={"cell": "margin [95% CI]"}))]
    sections.append(
        "Reading these: forced identification and the logit metric read the next-token distribution the vector "
        "itself pushes towards its word, so a high injected rate alone shows the steering works, not awareness; "
        "the evidence for introspection is a hit rate above the false-alarm rate on the same question, and a "
        "localization accuracy above every control question and above the random vector (the answer "
        "distribution shows position bias). The logit metric runs every arm over "
        f"{settings['n_variants']} wordings of the question, one forward pass per trial: the false-alarm rate "
        "comes from one unsteered trial per wording (n = the wordings), the hit rate from every concept under "
        "every wording; d' uses the log-linear correction (0.5 added to each count, 1 to each n). Read the hit "
        "rate against three controls: the false-alarm rate, the yes rate under concept-like random vectors of "
        "the same norm (random_yes_rate: any such push), and control_question_yes_bias, the rise of yes to "
        "questions whose answer is no (the yes-bias steering alone creates; P(yes) is renormalised over yes "
        "and no, which drifts to 0.5 when strong steering collapses both, and low_mass_* counts the trials "
        f"whose yes and no held less than {settings['min_option_mass']} of the probability). Forced "
        "identification is read against its leak arm: top1_injected_minus_leak is how much more often the "
        "concept is named when asked about thoughts than when a request for any word lets it leak. Holm "
        "corrections: 'cell' is per cell and table, over that cell's tests against chance only — forced "
        "identification's four top-1 rates (thought question and leak, injected and unsteered) and "
        "localization's accuracy of every question and kind; 'sweep' is per measure over every model, layer, "
        "vector method and strength of the experiment, the one to cite for a cell picked from the heatmaps; "
        "the logit metric and the differences test nothing against chance and carry intervals only. Small models are not expected to pass these controls.")
    return sections


def run_report(inputs: Mapping[str, Any], output_path: Path | str, settings: Mapping[str, Any]) -> None:
    """Write the markdown report from the workflow's files (`inputs`: named paths/lists)."""
    models = [read_json(path)["model"] for path in inputs["generations"]]
    coded = pd.concat([read_csv(p) for p in inputs["coding"]], ignore_index=True)
    judged = pd.concat([read_csv(p) for p in inputs["judge"]], ignore_index=True)
    content = read_csv(inputs["content"])
    entropy = read_csv(inputs["entropy"])
    agreement, probing = read_json(inputs["agreement"]), read_json(inputs["probing"])
    mixed, scaling = read_json(inputs["mixed_effects"]), read_json(inputs["scaling"])
    seed, n_resamples = settings["statistics"]["seed"], settings["statistics"]["bootstrap_resamples"]
    judge_columns = [f"judge_{d}" for d in JUDGE_DIMENSIONS]
    first_token = ("first_token_entropy_t1", "first_token_entropy_sampling")
    sections = [
        f"# Introspection study `{settings['study']}`: report",
        "Written by the workflow's `report` rule from the files in `results/`; every number below is in "
        "`results/statistics/` with its full precision. Intervals are 95% percentile bootstrap CIs.",
        _design(settings, models, coded),
        _headlines(content),
        "## Caveats\n\n" + "\n".join(f"- {c}" for c in caveats(models, coded, judged, content, settings)),
        "## Keyword content coding\n\nLevels 0-3 from the lexicon `" + settings["coding"]["lexicon"] + "` (rules next "
        "to its patterns); mean per model and prompt type.",
        _figure("keyword_scores", "Keyword scores by model and prompt type (95% bootstrap CIs over completions)."),
        _descriptives(coded, DIMENSIONS, DIMENSIONS, seed, n_resamples),
        _lexicon_agreement(inputs["labelled_examples"], inputs["lexicon"]),
        _comparisons(content, "Instruct vs base (families with both variants; Holm within each unit and condition)"),
        "## LLM judge",
        _figure("judge_scores", "Judge scores (expected level over the answer tokens 0-3)."),
        _descriptives(judged, judge_columns, JUDGE_DIMENSIONS, seed, n_resamples),
        "### Keyword coder vs judge",
        _agreement(agreement),
        _figure("agreement", "Keyword level against the judge's most probable level, counts."),
        "## Token entropy",
        _figure("first_token_entropy", "First-token entropy per model and prompt type (one value per prompt)."),
        _figure("entropy_profiles", "Mean entropy by position at T=1 and of the sampling distribution."),
        "First-token entropy (nats; once per prompt) at T=1 and of the sampling distribution:",
        interval_table(entropy[entropy["comparison"] == "descriptive"], first_token, ("T=1", "sampling")),
        _comparisons(entropy, "Instruct vs base entropy"),
        "## Activation geometry and linear probes",
        _figure("activation_embeddings", "PCA and UMAP of mid-layer activations (mean over response tokens)."),
        _figure("probe_accuracy", "Probe accuracy by depth (solid), shuffled-label control (dashed), majority "
                                  "baseline (dotted); folds grouped by prompt."),
        "Layer per task and subset chosen on one half of the prompts and scored on the other (both ways, mean), beside "
        "the optimistic maximum over layers; probes.csv has every layer with its controls, p from the label "
        "permutations and Holm over layers (p_holm) and over the whole sweep (p_holm_sweep). Base vs instruct is "
        "probed within base/instruct pairs only:",
        _probes(probing),
        *(_injection(read_json(inputs["injection"]), settings["injection"],
                     [(n, c) for n, c in INJECTION_FIGURE_CAPTIONS if any(Path(f).stem == n for f in inputs["injection_figures"])])
          if "injection" in inputs else []),
        *(selfknowledge_section(inputs, settings["selfknowledge"], markdown_table, _figure)
          if "selfknowledge" in inputs else []),
        *profile_section({"profile": inputs["profile"], "correlations": inputs["profile_correlations"],
                          "profile_summary": inputs["profile_summary"]}, markdown_table),
        "## Mixed-effects models and scaling",
        "Family random intercept (as the original study), and `instruct_crossed`: crossed family, model, prompt and "
        "prompt x instruct variance components, fitted to (model, prompt) cell means.",
        _mixed_effects(mixed),
        _scaling(scaling),
        "### Not estimable in this design",
        _not_estimable(probing, mixed, scaling),
        "## Provenance",
        markdown_table(pd.DataFrame([{"package": k, "version": v} for k, v in versions().items() if v])),
    ]
    write_text(output_path, "\n\n".join(sections) + "\n")
