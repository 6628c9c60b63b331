"""The study's figures (seaborn), each written atomically as a PNG from the analysis tables.

Each function takes the tables it plots and the output path; error bars are 95% percentile
bootstrap CIs over completions (seeded), as in the statistics files.
"""

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .analysis import DIMENSIONS  # noqa: E402
from .prompts import PROMPT_TYPES  # noqa: E402
from .report import JUDGE_DIMENSIONS  # noqa: E402
from .storage import atomic_path  # noqa: E402

DPI = 110
# Saved PNGs carry no date or software stamp, so the same data give the same bytes.
PNG_METADATA = {"Software": None}


def _save(figure, path):
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", metadata=PNG_METADATA)
    plt.close(figure)


def _long_scores(table, columns, names):
    """One row per (completion, dimension) for a faceted bar plot."""
    long = table.melt(id_vars=["model", "prompt_type"], value_vars=list(columns), var_name="dimension", value_name="score")
    return long.assign(dimension=long["dimension"].map(dict(zip(columns, names))))


def score_bars(table, columns, names, title, path, seed):
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


def entropy_profiles(profiles, path):
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


def first_token_entropy(statistics, path):
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
            axis.errorbar(x, data["mean_a"], yerr=[data["mean_a"] - data["mean_a_low"], data["mean_a_high"] - data["mean_a"]],
                          fmt="o", capsize=3, label=model)
        axis.set_xticks(range(len(order)), order, rotation=20)
        axis.set_title(f"first-token entropy, {title}")
        axis.set_ylabel("entropy (nats)")
    axes[-1].legend(fontsize=8)
    _save(figure, path)


def probe_accuracy(probes, path):
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


def activation_embeddings(embeddings, path):
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


def agreement_matrix(coded, judged, dimensions, path):
    """Keyword level (rows) against the judge's argmax level (columns), counts per dimension."""
    both = coded.merge(judged, on=["model", "prompt_id", "rep"], suffixes=("", "_judge"))
    figure, axes = plt.subplots(1, len(dimensions), figsize=(4 * len(dimensions), 3.4), squeeze=False)
    for axis, dimension in zip(axes[0], dimensions):
        counts = pd.crosstab(both[dimension], both[f"judge_{dimension}_argmax"].astype(int)).reindex(
            index=range(4), columns=range(4), fill_value=0)
        sns.heatmap(counts, annot=True, fmt="d", cbar=False, cmap="Blues", ax=axis)
        axis.set(title=dimension, xlabel="judge (argmax)", ylabel="keyword level")
    _save(figure, path)


def run_figures(inputs, outputs, seed):
    """Every figure of the report from the analysis files (`inputs`) to the PNG paths (`outputs`)."""
    coded = pd.concat([pd.read_csv(p) for p in inputs["coding"]], ignore_index=True)
    judged = pd.concat([pd.read_csv(p) for p in inputs["judge"]], ignore_index=True)
    score_bars(coded, DIMENSIONS, DIMENSIONS, "Keyword coding", outputs["keyword_scores"], seed)
    score_bars(judged, [f"judge_{d}" for d in JUDGE_DIMENSIONS], JUDGE_DIMENSIONS, "LLM judge",
               outputs["judge_scores"], seed)
    agreement_matrix(coded, judged, DIMENSIONS, outputs["agreement"])
    first_token_entropy(pd.read_csv(inputs["entropy_statistics"]), outputs["first_token_entropy"])
    entropy_profiles(pd.read_csv(inputs["entropy_profiles"]), outputs["entropy_profiles"])
    probe_accuracy(pd.read_csv(inputs["probes"]), outputs["probe_accuracy"])
    activation_embeddings(pd.read_csv(inputs["embeddings"]), outputs["activation_embeddings"])
