"""The study's figures (seaborn), each written atomically as a PNG from the analysis tables.

Each function takes the tables it plots and the output path; error bars are 95% percentile
bootstrap CIs over completions (seeded), as in the statistics files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..registry import EXPERIMENTS  # noqa: E402
from ..prompts import PROMPT_TYPES  # noqa: E402
from ..storage import atomic_path, read_csv  # noqa: E402
from ..study.coding import DIMENSIONS  # noqa: E402
from ..study.rubric import DIMENSIONS as JUDGE_DIMENSIONS  # noqa: E402

DPI = 110
# Saved PNGs carry no date or software stamp, so the same data give the same bytes.
PNG_METADATA = {"Software": None}


def _save(figure, path):
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", metadata=PNG_METADATA)
    plt.close(figure)


def _error_bars(estimate, low, high):
    """Error bar lengths below and above each estimate (0 where rounding puts a bound past it)."""
    return [(estimate - low).clip(lower=0), (high - estimate).clip(lower=0)]


def _long_scores(table, columns, names):
    """One row per (completion, dimension) for a faceted bar plot."""
    long = table.melt(id_vars=["model", "prompt_type"], value_vars=list(columns), var_name="dimension", value_name="score")
    return long.assign(dimension=long["dimension"].map(dict(zip(columns, names))))


def score_bars(table: pd.DataFrame, columns: Sequence[str], names: Sequence[str], title: str, path: Path | str,
               seed: int) -> None:
    """Mean score per model and prompt type, one panel per dimension, with bootstrap CIs."""
    long = _long_scores(table, columns, names)
    grid = sns.catplot(
        data=long, kind="bar", x="prompt_type", y="score", hue="model", col="dimension", col_wrap=3 if len(columns) == 3 else 2,
        order=[t for t in PROMPT_TYPES if t in set(long["prompt_type"])], errorbar=("ci", 95), n_boot=2000,
        seed=seed, height=3.2, aspect=1.4,
    )
    grid.set_titles("{col_name}").set_axis_labels("prompt type", "score (0-3)").set(ylim=(0, 3))
    for axis in grid.axes.flat:
        axis.tick_params(axis="x", labelrotation=20)
    grid.figure.suptitle(title, y=1.02)
    _save(grid.figure, path)


def entropy_profiles(profiles: pd.DataFrame, path: Path | str) -> None:
    """Mean token entropy by position, per model (hue) and prompt type (panel), at T=1 and of the
    sampling distribution (rows)."""
    long = profiles.melt(
        id_vars=["model", "prompt_type", "position"], value_vars=["entropy_t1_mean", "entropy_sampling_mean"],
        var_name="distribution", value_name="entropy (nats)")
    long["distribution"] = long["distribution"].map({"entropy_t1_mean": "T=1", "entropy_sampling_mean": "sampling"})
    grid = sns.relplot(
        data=long, kind="line", x="position", y="entropy (nats)", hue="model", row="distribution",
        col="prompt_type", col_order=[t for t in PROMPT_TYPES if t in set(long["prompt_type"])],
        height=2.6, aspect=1.2, errorbar=None,
    )
    grid.set_titles("{row_name} | {col_name}")
    _save(grid.figure, path)


def first_token_entropy(statistics: pd.DataFrame, path: Path | str) -> None:
    """First-token entropy per model and prompt type (once per prompt), mean and bootstrap CI."""
    rows = statistics[(statistics["comparison"] == "descriptive")
                      & statistics["dimension"].isin(["first_token_entropy_t1", "first_token_entropy_sampling"])]
    order = [t for t in PROMPT_TYPES if t in set(rows["prompt_type"])]
    models = sorted(rows["model"].unique())
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for axis, (dimension, title) in zip(axes, (("first_token_entropy_t1", "T=1"), ("first_token_entropy_sampling", "sampling"))):
        for offset, model in enumerate(models):
            data = rows[(rows["dimension"] == dimension) & (rows["model"] == model)].set_index("prompt_type").reindex(order)
            x = [i + (offset - (len(models) - 1) / 2) * 0.15 for i in range(len(order))]
            axis.errorbar(x, data["mean_a"], yerr=_error_bars(data["mean_a"], data["mean_a_low"], data["mean_a_high"]),
                          fmt="o", capsize=3, label=model)
        axis.set_xticks(range(len(order)), order, rotation=20)
        axis.set_title(f"first-token entropy, {title}")
        axis.set_ylabel("entropy (nats)")
    axes[-1].legend(fontsize=8)
    _save(figure, path)


def probe_accuracy(probes: pd.DataFrame, path: Path | str) -> None:
    """Probe accuracy by layer depth for every estimable task and subset, with its shuffled-label
    control (dashed) and train-fold majority baseline (dotted)."""
    rows = probes[probes["estimable"].astype(bool)]
    tasks = sorted(rows["task"].unique())
    figure, axes = plt.subplots(1, max(len(tasks), 1), figsize=(5 * max(len(tasks), 1), 3.6), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        for (subset, data), color in zip(rows[rows["task"] == task].groupby("subset", sort=True), sns.color_palette()):
            data = data.sort_values("layer_fraction")
            axis.plot(data["layer_fraction"], data["accuracy"], "o-", color=color, label=subset)
            axis.plot(data["layer_fraction"], data["shuffled_control"], "--", color=color, alpha=0.7)
            axis.plot(data["layer_fraction"], data["majority_baseline"], ":", color=color, alpha=0.7)
        axis.set(title=task, xlabel="layer (fraction of depth)", ylabel="accuracy", ylim=(-0.02, 1.02))
        axis.legend(fontsize=7)
    if not tasks:
        axes[0][0].text(0.5, 0.5, "no estimable probe", ha="center", va="center")
    _save(figure, path)


def activation_embeddings(embeddings: pd.DataFrame, path: Path | str) -> None:
    """PCA and UMAP of mid-layer activations: one row per (layout, method), coloured by variant,
    family and prompt type."""
    panels = list(embeddings.groupby(["layout", "method"], sort=True))
    colourings = ("variant", "family", "prompt_type")
    figure, axes = plt.subplots(len(panels), 3, figsize=(13, 3.6 * len(panels)), squeeze=False)
    for row, ((layout, method), data) in zip(axes, panels):
        for axis, hue in zip(row, colourings):
            sns.scatterplot(data=data, x="x", y="y", hue=hue, style="model", ax=axis, s=25)
            axis.set(title=f"{method.upper()}, {layout}: {hue}", xlabel="", ylabel="")
            axis.legend(fontsize=6)
    _save(figure, path)


def agreement_matrix(coded: pd.DataFrame, judged: pd.DataFrame, dimensions: Sequence[str], path: Path | str) -> None:
    """Keyword level (rows) against the judge's argmax level (columns), counts per dimension."""
    both = coded.merge(judged, on=["model", "prompt_id", "rep"], suffixes=("", "_judge"))
    figure, axes = plt.subplots(1, len(dimensions), figsize=(4 * len(dimensions), 3.4), squeeze=False)
    for axis, dimension in zip(axes[0], dimensions):
        counts = pd.crosstab(both[dimension], both[f"judge_{dimension}_argmax"].astype(int)).reindex(
            index=range(4), columns=range(4), fill_value=0)
        sns.heatmap(counts, annot=True, fmt="d", cbar=False, cmap="Blues", ax=axis)
        axis.set(title=dimension, xlabel="judge (argmax)", ylabel="keyword level")
    _save(figure, path)


def _headline_rows(experiment, table):
    """(headline rows, control rows) of one experiment's table; localization: the injected trials
    of each question (the controls are the other questions and the random vector)."""
    headline = EXPERIMENTS[experiment].headline
    if headline.by_kind:
        return table[table["kind"] == "injected"], table[table["kind"] == "random"]
    return table[table["measure"] == headline.measure], table[table["measure"] == headline.control]


def injection_sweep(tables: Mapping[str, pd.DataFrame], path: Path | str) -> None:
    """Each experiment's headline rate by strength (Wilson CI), one line per layer (and question,
    for localization); the control as a dashed line; chance dotted where there is one."""
    figure, axes = plt.subplots(1, len(tables), figsize=(4.6 * len(tables), 3.6), squeeze=False)
    for axis, (experiment, table) in zip(axes[0], tables.items()):
        rows, controls = _headline_rows(experiment, table)
        by_kind = EXPERIMENTS[experiment].headline.by_kind
        split = ["model", "layer"] + (["question"] if by_kind else [])
        for (key, data), color in zip(rows.groupby(split, sort=True), sns.color_palette(n_colors=12)):
            data = data.sort_values("strength_relative")
            axis.errorbar(data["strength_relative"], data["estimate"],
                          yerr=_error_bars(data["estimate"], data["low"], data["high"]),
                          fmt="o-", capsize=3, color=color, label=", ".join(map(str, key[1:])))
            control = controls.merge(data[split].drop_duplicates(), on=split).sort_values("strength_relative")
            axis.plot(control["strength_relative"], control["estimate"], "--", color=color, alpha=0.7)
        if rows["chance"].notna().any():
            axis.axhline(rows["chance"].dropna().iloc[0], color="grey", linestyle=":", linewidth=1)
        axis.set(title=f"{experiment}: {EXPERIMENTS[experiment].headline.measure}", xlabel="strength (x mean residual norm)",
                 ylabel="estimate")
        axis.legend(fontsize=6, title="layer" + (", question" if by_kind else ""), title_fontsize=7)
    _save(figure, path)


def injection_heatmaps(tables: Mapping[str, pd.DataFrame], path: Path | str) -> None:
    """The headline estimate over layer x strength, one panel per (experiment, model); for
    localization the introspection question's accuracy is shown per question as rows."""
    panels = []
    for experiment, table in tables.items():
        rows, _ = _headline_rows(experiment, table)
        for model, data in rows.groupby("model", sort=True):
            index = ["layer", "question"] if EXPERIMENTS[experiment].headline.by_kind else ["layer"]
            panels.append((f"{experiment}\n{model}", data.pivot_table(index=index, columns="strength_relative",
                                                                      values="estimate", aggfunc="first")))
    figure, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.4), squeeze=False)
    for axis, (title, grid) in zip(axes[0], panels):
        sns.heatmap(grid, annot=True, fmt=".2f", cbar=False, cmap="viridis", ax=axis)
        axis.set(title=title, xlabel="strength", ylabel=" / ".join(grid.index.names))
        axis.title.set_fontsize(8)
    _save(figure, path)


def localization_answers(answers: pd.DataFrame, path: Path | str) -> None:
    """Share of each answer (1..N) per injected position, per question, at every (layer, strength)
    cell: the diagonal is a correct answer, a column that is dark everywhere is a position bias."""
    injected = answers[answers["kind"] == "injected"]
    cells = list(injected.groupby(["model", "layer", "strength_relative", "question"], sort=True))
    columns = injected["question"].nunique()
    rows = max(len(cells) // columns, 1)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3 * rows), squeeze=False)
    for axis, ((model, layer, strength, question), data) in zip(axes.flat, cells):
        grid = data.pivot_table(index="injected_position", columns="answer", values="share", aggfunc="first")
        sns.heatmap(grid, vmin=0, vmax=1, cmap="Blues", cbar=False, annot=True, fmt=".1f", ax=axis)
        axis.set(title=f"{question}: layer {layer}, strength {strength:g}", xlabel="answer", ylabel="injected in")
        axis.title.set_fontsize(8)
    _save(figure, path)


def run_injection_figures(inputs: Mapping[str, Path | str], outputs: Mapping[str, Path | str]) -> None:
    """The injection figures from the injection_*.csv tables (`inputs`: experiment -> path)."""
    tables = {experiment: read_csv(path) for experiment, path in inputs.items() if experiment in EXPERIMENTS}
    injection_sweep(tables, outputs["injection_sweep"])
    injection_heatmaps(tables, outputs["injection_heatmaps"])
    if "localization_answers" in outputs:
        localization_answers(read_csv(inputs["localization_answers"]), outputs["localization_answers"])


def run_figures(inputs: Mapping[str, Any], outputs: Mapping[str, Path | str], seed: int) -> None:
    """Every figure of the report from the analysis files (`inputs`) to the PNG paths (`outputs`)."""
    coded = pd.concat([read_csv(p) for p in inputs["coding"]], ignore_index=True)
    judged = pd.concat([read_csv(p) for p in inputs["judge"]], ignore_index=True)
    score_bars(coded, DIMENSIONS, DIMENSIONS, "Keyword coding", outputs["keyword_scores"], seed)
    score_bars(judged, [f"judge_{d}" for d in JUDGE_DIMENSIONS], JUDGE_DIMENSIONS, "LLM judge",
               outputs["judge_scores"], seed)
    agreement_matrix(coded, judged, DIMENSIONS, outputs["agreement"])
    first_token_entropy(read_csv(inputs["entropy_statistics"]), outputs["first_token_entropy"])
    entropy_profiles(read_csv(inputs["entropy_profiles"]), outputs["entropy_profiles"])
    probe_accuracy(read_csv(inputs["probes"]), outputs["probe_accuracy"])
    activation_embeddings(read_csv(inputs["embeddings"]), outputs["activation_embeddings"])


def selfknowledge_shifts(table: pd.DataFrame, path: Path | str) -> None:
    """answer_shift: per answer pair, P(A) per category (per model), or its shift against the base
    (per comparison when there is one), with 95% bootstrap CIs over questions."""
    shifted = table[table["comparison"] != "per_model"]
    rows = shifted if len(shifted) else table
    measure = "shift_p_a" if len(shifted) else "p_a"
    rows = rows[(rows["measure"] == measure) & ~rows["subset"].isin(["suggestive", "control", "headline"])]
    pairs = list(dict.fromkeys(rows["pair"]))
    figure, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4.2), squeeze=False)
    for axis, pair in zip(axes[0], pairs):
        data = rows[rows["pair"] == pair]
        categories = list(dict.fromkeys(data["subset"]))
        models = list(dict.fromkeys(data["model"]))
        width = 0.8 / len(models)
        for k, (model, color) in enumerate(zip(models, sns.color_palette(n_colors=max(len(models), 3)))):
            one = data[data["model"] == model].set_index("subset").reindex(categories)
            axis.bar([i + k * width for i in range(len(categories))], one["estimate"], width=width, color=color,
                     yerr=_error_bars(one["estimate"], one["low"], one["high"]), capsize=2, label=model)
        axis.axhline(0 if len(shifted) else 0.5, color="grey", linestyle=":", linewidth=1)
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(categories))], categories, rotation=60, ha="right",
                        fontsize=7)
        axis.set(title=f"pair {pair}", ylabel=("P(A) variant - base" if len(shifted) else "P(A)"))
        axis.legend(fontsize=7)
    _save(figure, path)


def selfknowledge_calibration(table: pd.DataFrame, path: Path | str) -> None:
    """calibration: KL(model || verbal report), top-5 overlap and top-1 match per model, with
    95% bootstrap CIs over prompts."""
    rows = table[table["comparison"] == "per_model"]
    measures = ["kl", "top5_overlap", "top1_match"]
    figure, axes = plt.subplots(1, 3, figsize=(11, 3.4), squeeze=False)
    for axis, measure in zip(axes[0], measures):
        data = rows[rows["measure"] == measure]
        axis.bar(data["model"], data["estimate"], yerr=_error_bars(data["estimate"], data["low"], data["high"]),
                 capsize=3, color=sns.color_palette(n_colors=max(len(data), 3))[: len(data)])
        axis.set(title=measure, ylabel="nats" if measure == "kl" else "share of prompts")
        axis.tick_params(axis="x", labelrotation=30, labelsize=7)
    _save(figure, path)


def selfknowledge_detection(table: pd.DataFrame, path: Path | str) -> None:
    """detection: per split (rows) and layer range (columns), the rate of said_yes (the variant's
    "steered" answer) by magnitude with Wilson 95% intervals, one line per model and detection data
    variant; magnitude 0 is the false-positive rate on the split's unsteered trials."""
    rows = table[table["comparison"] == "per_model"]
    cells = rows[rows["measure"] == "hit_rate"]
    parsed = cells["subset"].str.extract(r"^(?P<split>\S+) magnitude=(?P<magnitude>\S+) layers=(?P<layers>.+)$")
    cells = cells.assign(split=parsed["split"], magnitude=parsed["magnitude"].astype(float), layers=parsed["layers"])
    alarms = rows[rows["measure"] == "false_positive_rate"].rename(columns={"subset": "split"})
    splits, ranges = list(dict.fromkeys(cells["split"])), list(dict.fromkeys(cells["layers"]))
    figure, axes = plt.subplots(max(len(splits), 1), max(len(ranges), 1), figsize=(3.6 * max(len(ranges), 1),
                                3.0 * max(len(splits), 1)), squeeze=False, sharey=True)
    lines = list(dict.fromkeys(zip(cells["model"], cells["pair"])))
    colors = dict(zip(lines, sns.color_palette(n_colors=max(len(lines), 3))))
    for i, split in enumerate(splits):
        for j, layers in enumerate(ranges):
            axis = axes[i][j]
            for model, pair in lines:
                one = cells[(cells["split"] == split) & (cells["layers"] == layers) & (cells["model"] == model)
                            & (cells["pair"] == pair)].sort_values("magnitude")
                zero = alarms[(alarms["split"] == split) & (alarms["model"] == model) & (alarms["pair"] == pair)]
                data = pd.concat([zero.assign(magnitude=0.0), one])[["magnitude", "estimate", "low", "high"]]
                axis.errorbar(data["magnitude"], data["estimate"], yerr=_error_bars(data["estimate"], data["low"],
                              data["high"]), marker="o", capsize=2, color=colors[(model, pair)],
                              label=f"{model} ({pair} data)")
            axis.set(title=f"{split}, layers {layers}", xlabel="magnitude (x mean residual norm)", ylim=(-0.02, 1.02))
            if j == 0:
                axis.set_ylabel("said_yes rate (0: false positives)")
    if lines:
        axes[0][-1].legend(fontsize=6, loc="best")
    _save(figure, path)


def run_selfknowledge_figures(inputs: Mapping[str, Path | str], outputs: Mapping[str, Path | str]) -> None:
    """The self-knowledge figures from the selfknowledge_*.csv tables (`inputs`: evaluation -> path)."""
    if "selfknowledge_shifts" in outputs:
        selfknowledge_shifts(read_csv(inputs["answer_shift"]).fillna({"subset": ""}), outputs["selfknowledge_shifts"])
    if "selfknowledge_calibration" in outputs:
        selfknowledge_calibration(read_csv(inputs["calibration"]), outputs["selfknowledge_calibration"])
    if "selfknowledge_detection" in outputs:
        selfknowledge_detection(read_csv(inputs["detection"]).fillna({"subset": "", "pair": ""}),
                                outputs["selfknowledge_detection"])
