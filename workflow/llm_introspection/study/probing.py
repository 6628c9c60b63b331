"""Linear probes and 2-D embeddings of pooled hidden states, with folds grouped by prompt.

A completion is one sample: its hidden states at each stored hidden-state index are mean-pooled
over its positions. Repetitions of one prompt share the prompt's text, so cross-validation keeps
every prompt (group) on one side of each split; an ungrouped split would let a probe score by
recognising prompts, the leak of the original study. Controls, on the same folds: the train-fold
majority class, and a permutation null whose accuracies give the shuffled-label control and the
p-value.
"""

import json
import warnings
from collections import defaultdict

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..errors import InputError
from ..records import condition, condition_tables
from ..storage import open_h5
from .statistics import VARIANTS, families_with_both_variants, holm

MODEL_FIELDS = ("family", "size_b", "variant", "frame", "hidden_size", "n_layers")
LABEL_KEYS = ["model", "prompt_id", "rep"]
RESULT_COLUMNS = (
    "hidden_state_index", "layer_fraction", "accuracy", "balanced_accuracy", "majority_baseline",
    "shuffled_control", "p_value", "p_holm", "n", "n_groups", "n_splits", "estimable", "reason",
)
TABLE_COLUMNS = ("task", "subset", *RESULT_COLUMNS)


# --- pooled activations -------------------------------------------------------------------------

def _attr(node, key, path):
    if key not in node.attrs:
        raise InputError(f"{path}: {node.name} has no attribute {key!r}")
    return node.attrs[key]


def _states(h5, group, path):
    if f"{group}/hidden_states" not in h5:
        raise InputError(f"{path}: no dataset {group}/hidden_states")
    return h5[group]["hidden_states"][()].astype(np.float64)


def _header(h5, path):
    """The file's model record and hidden-state indices, and its layout (hidden size, layers, indices)."""
    model = json.loads(_attr(h5, "model", path))
    missing = [k for k in ("name", *MODEL_FIELDS) if k not in model]
    if missing:
        raise InputError(f"{path}: model attribute lacks {missing}")
    indices = tuple(json.loads(_attr(h5, "hidden_state_indices", path)))
    return model, indices, (model["hidden_size"], model["n_layers"], indices)


def activation_layouts(paths):
    """Activation files grouped by layout: (hidden_size, n_layers, hidden-state indices) -> paths.

    Files of one layout can be pooled together (`pooled_activations`)."""
    layouts = defaultdict(list)
    for path in paths:
        with open_h5(path) as h5:
            layouts[_header(h5, path)[2]].append(path)
    return dict(layouts)


def pooled_activations(paths, include_prompt=False):
    """Mean-pooled hidden states of every completion in the activation files `paths`.

    Pools over the completion's positions or, with `include_prompt`, over prompt + completion
    without the attention-sink position. All files must share one layout (see
    `activation_layouts`). Returns (features: hidden-state index -> float32 (n_completions, d),
    meta: one row per completion with model, family, size_b, variant, hidden_size, n_layers,
    prompt_id, prompt_type, rep, seed).
    """
    pooled, rows, first = defaultdict(list), [], None
    for path in paths:
        with open_h5(path) as h5:
            model, indices, layout = _header(h5, path)
            first = first or (path, layout)
            if layout != first[1]:
                raise InputError(
                    f"{path}: layout (hidden size, layers, indices) {layout} differs from {first[0]}'s "
                    f"{first[1]}: pool one layout at a time (activation_layouts)")
            prompt = {"prompt_id": _attr(h5, "prompt_id", path), "prompt_type": _attr(h5, "prompt_type", path)}
            if include_prompt:
                sink = int(_attr(h5, "attention_sink_position", path))
                context = np.delete(_states(h5, "prompt", path), sink, axis=1)
                context_sum, context_len = context.sum(axis=1), context.shape[1]
            else:
                context_sum, context_len = 0.0, 0
            reps = sorted(name for name in h5 if name.startswith("rep_"))
            if not reps:
                raise InputError(f"{path}: no rep_NN groups")
            for name in reps:
                states = _states(h5, name, path)
                mean = (context_sum + states.sum(axis=1)) / (context_len + states.shape[1])
                for index, vector in zip(indices, mean):
                    pooled[index].append(vector)
                rows.append({
                    "model": model["name"], **{k: model[k] for k in MODEL_FIELDS}, "condition": condition(model), **prompt,
                    "rep": int(_attr(h5[name], "rep", path)), "seed": int(_attr(h5[name], "seed", path)),
                })
    features = {index: np.array(vectors, dtype=np.float32) for index, vectors in pooled.items()}
    return features, pd.DataFrame(rows)


# --- one probe ----------------------------------------------------------------------------------

def make_probe():
    """The probe: standardize, then L2 logistic regression."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))


def grouped_splits(labels, groups, n_splits=5, seed=0):
    """Grouped (train, test) folds, stratified by label where StratifiedGroupKFold manages.

    Uses min(n_splits, number of groups) folds. Returns None when no splitter gives every fold a
    test set and a training set with two classes."""
    labels = np.asarray(labels)
    k = min(n_splits, len(np.unique(groups)))
    for splitter in (StratifiedGroupKFold, GroupKFold):
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "The least populated class", UserWarning)
                splits = list(splitter(k, shuffle=True, random_state=seed).split(labels, labels, groups))
        except ValueError:  # StratifiedGroupKFold: fewer members of every class than folds
            continue
        if all(len(test) and len(np.unique(labels[train])) > 1 for train, test in splits):
            return splits
    return None


def _predict_folds(estimator, features, labels, splits):
    """Out-of-fold predictions; a training fold with one class predicts that class."""
    predicted = np.empty_like(labels)
    for train, test in splits:
        classes = np.unique(labels[train])
        if len(classes) == 1:
            predicted[test] = classes[0]
        else:
            predicted[test] = clone(estimator).fit(features[train], labels[train]).predict(features[test])
    return predicted


def _fold_accuracies(labels, predicted, splits):
    return [float(np.mean(labels[test] == predicted[test])) for _, test in splits]


def _accuracy(estimator, features, labels, splits):
    return np.mean(_fold_accuracies(labels, _predict_folds(estimator, features, labels, splits), splits))


def shuffled_labels(labels, groups, rng):
    """Labels permuted across (group, label) cells: each cell's completions keep one label together.

    Repetitions are never treated as independent: a label given per prompt moves with the whole
    prompt, and in base vs instruct each (prompt, model) cell moves as one."""
    codes, cells = pd.factorize(pd.MultiIndex.from_arrays([groups, labels]))
    cell_labels = np.asarray(cells.get_level_values(1))
    return rng.permutation(cell_labels)[codes]


def probe(features, labels, groups, n_splits=5, seed=0, n_permutations=100, n_jobs=None):
    """Cross-validated accuracy of `make_probe` on (n, d) `features`, folds grouped by `groups`.

    Returns accuracy (mean over folds), fold_accuracies, balanced_accuracy (of the pooled
    out-of-fold predictions), majority_baseline (train-fold majority class, same folds),
    shuffled_control (mean accuracy under `n_permutations` seeded `shuffled_labels`, same folds),
    p_value ((1 + null >= accuracy) / (1 + n_permutations)), n, n_groups, n_splits; or estimable
    False with a reason when there is one class, one group, or no usable grouped split. The
    permutations run in `n_jobs` processes (joblib); the result does not depend on it.
    """
    features, labels, groups = np.asarray(features), np.asarray(labels), np.asarray(groups)
    counts = {"n": len(labels), "n_groups": len(np.unique(groups))}
    splits = None
    if len(np.unique(labels)) < 2:
        reason = "only one class"
    elif counts["n_groups"] < 2:
        reason = "fewer than 2 groups"
    else:
        splits = grouped_splits(labels, groups, n_splits, seed)
        reason = "no grouped split leaves two classes in every training fold"
    if splits is None:
        return {"estimable": False, "reason": reason, **counts}
    estimator = make_probe()
    predicted = _predict_folds(estimator, features, labels, splits)
    folds = _fold_accuracies(labels, predicted, splits)
    majority = _fold_accuracies(labels, _predict_folds(DummyClassifier(), features, labels, splits), splits)
    rng = np.random.default_rng(seed)
    permutations = [shuffled_labels(labels, groups, rng) for _ in range(n_permutations)]
    null = Parallel(n_jobs=n_jobs)(delayed(_accuracy)(estimator, features, p, splits) for p in permutations)
    accuracy = float(np.mean(folds))
    return {
        "estimable": True, "reason": None, "accuracy": accuracy, "fold_accuracies": folds,
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "majority_baseline": float(np.mean(majority)), "shuffled_control": float(np.mean(null)),
        "p_value": float((1 + np.sum(np.asarray(null) >= accuracy)) / (1 + n_permutations)),
        **counts, "n_splits": len(splits),
    }


# --- layers and tasks ---------------------------------------------------------------------------

def probe_all_layers(features, meta, target, groups_column="prompt_id", **probe_options):
    """`probe` of meta[target] at every hidden-state index, with Holm-adjusted p-values across layers.

    `features` and `meta` are row-aligned (as from `pooled_activations`); layer_fraction is
    index / n_layers. Returns one row per index with RESULT_COLUMNS."""
    labels, groups = meta[target].to_numpy(), meta[groups_column].to_numpy()
    n_layers = meta["n_layers"].iloc[0]
    rows = [
        {"hidden_state_index": index, "layer_fraction": index / n_layers, **probe(x, labels, groups, **probe_options)}
        for index, x in sorted(features.items())
    ]
    table = pd.DataFrame.from_records(rows, columns=RESULT_COLUMNS)
    table["p_holm"] = holm(table["p_value"])[0]
    return table


def _subset(features, meta, mask):
    mask = np.asarray(mask)
    return {index: x[mask] for index, x in features.items()}, meta[mask].reset_index(drop=True)


def _not_estimable(task, reason):
    return pd.DataFrame([{"task": task, "subset": "", "estimable": False, "reason": reason}])


def _run_subsets(task, subsets, features, meta, target, no_subset_reason, **probe_options):
    """One probe_all_layers table per (subset name, row mask); one not-estimable row if none."""
    tables = [
        probe_all_layers(*_subset(features, meta, mask), target, **probe_options).assign(task=task, subset=name)
        for name, mask in subsets
    ]
    return pd.concat(tables, ignore_index=True) if tables else _not_estimable(task, no_subset_reason)


def _variant_subsets(meta):
    """Per condition (native frame; shared frame, when present): the families with both variants,
    and the hidden sizes with both variants spanning several families."""
    subsets = []
    for name, rows in condition_tables(meta).items():
        prefix = "" if name == "native" else f"{name}: "
        in_condition = meta.index.isin(rows.index)
        subsets += [(f"{prefix}family={f}", in_condition & (meta["family"] == f))
                    for f in families_with_both_variants(rows)]
        for size, sized in rows.groupby("hidden_size"):
            if set(sized["variant"]) >= set(VARIANTS) and sized["family"].nunique() > 1:
                subsets.append((f"{prefix}hidden_size={size}", in_condition & (meta["hidden_size"] == size)))
    return subsets


def _self_reference(features, meta, extra_labels, **probe_options):
    """A probe of code >= 1 per label column of `extra_labels`, within each model."""
    task = "self_reference_content"
    if extra_labels is None:
        return _not_estimable(task, "no per-completion self-reference labels given (extra_labels)")
    merged = meta[LABEL_KEYS].merge(extra_labels, on=LABEL_KEYS, how="left", validate="many_to_one")
    tables = []
    for column in (c for c in extra_labels.columns if c not in LABEL_KEYS):
        code = merged[column].to_numpy(dtype=float)
        labelled = meta.assign(self_referential=code >= 1)
        subsets = [(f"model={m}, label={column}", mask) for m in meta["model"].unique()
                   if (mask := (meta["model"] == m).to_numpy() & ~np.isnan(code)).any()]
        tables.append(_run_subsets(task, subsets, features, labelled, "self_referential",
                                   f"no completion has a {column} label", **probe_options))
    return pd.concat(tables, ignore_index=True) if tables else _not_estimable(task, "extra_labels has no label column")


def probe_tasks(features, meta, extra_labels=None, **probe_options):
    """The study's probes over every hidden-state index, as one tidy table (TABLE_COLUMNS).

    - base_vs_instruct: variant, within each family that has both variants, and within each
      hidden size that has both variants across more than one family; in the native frame and,
      when the meta has shared-frame rows, on identical input text (subsets 'shared_frame: ...');
    - prompt_type: the 4 prompt types, within each model;
    - self_reference_content: code >= 1 for each label column of `extra_labels` (a table keyed by
      model, prompt_id, rep, e.g. keyword_self_reference 0-3), within each model; completions
      without a label are left out.
    Folds are grouped by prompt. A task without data is one row with estimable False and a reason.
    """
    missing = [k for k in LABEL_KEYS if extra_labels is not None and k not in extra_labels]
    if missing:
        raise InputError(f"self-reference labels lack key columns {missing}")
    per_model = [(f"model={m}", meta["model"] == m) for m in meta["model"].unique()]
    tables = [
        _run_subsets("base_vs_instruct", _variant_subsets(meta), features, meta, "variant",
                     "no family or hidden size has both base and instruct models", **probe_options),
        _run_subsets("prompt_type", per_model, features, meta, "prompt_type", "no completions", **probe_options),
        _self_reference(features, meta, extra_labels, **probe_options),
    ]
    return pd.concat(tables, ignore_index=True).reindex(columns=TABLE_COLUMNS)


# --- embeddings ---------------------------------------------------------------------------------

def embed(features_2d, method="pca", seed=0):
    """(n, 2) coordinates of the rows of `features_2d` by PCA or UMAP (seeded, reproducible).

    UMAP uses n_neighbors = min(15, n - 1) and needs at least 4 points; PCA needs 2 points and 2
    dimensions."""
    x = np.asarray(features_2d, dtype=np.float64)
    if method == "pca":
        if min(x.shape) < 2:
            raise InputError(f"PCA to 2 dimensions needs at least 2 points and 2 dimensions, got {x.shape}")
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "umap":
        if len(x) < 4:
            raise InputError(f"UMAP needs at least 4 points, got {len(x)}")
        import umap  # slow to import (numba): only when asked for

        return umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed, n_jobs=1).fit_transform(x)
    raise InputError(f"unknown embedding method {method!r}: use 'pca' or 'umap'")
