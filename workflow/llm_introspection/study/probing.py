"""Linear probes and 2-D embeddings of pooled hidden states, with folds grouped by prompt.

A completion is one sample: its hidden states at each stored hidden-state index are mean-pooled
over its positions. Repetitions of one prompt share the prompt's text, so cross-validation keeps
every prompt (group) on one side of each split; an ungrouped split would let a probe score by
recognising prompts, the leak of the original study. Controls, on the same folds: the train-fold
majority class, and a permutation null whose accuracies give the shuffled-label control and the
p-value.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..errors import InputError
from ..records import condition
from ..storage import open_h5

if TYPE_CHECKING:
    from numpy.typing import ArrayLike
    from sklearn.base import BaseEstimator
    from sklearn.pipeline import Pipeline

# An activation file's layout: (hidden size, layers, stored hidden-state indices).
Layout = tuple[int, int, tuple[int, ...]]

MODEL_FIELDS = ("family", "size_b", "variant", "frame", "hidden_size", "n_layers")


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


def file_models(paths: Iterable[Path | str]) -> list[dict[str, Any]]:
    """The model record (the reading model) of each activation file."""
    models = []
    for path in paths:
        with open_h5(path) as h5:
            models.append(_header(h5, path)[0])
    return models


def activation_layouts(paths: Iterable[Path | str]) -> dict[Layout, list[Path | str]]:
    """Activation files grouped by layout: (hidden_size, n_layers, hidden-state indices) -> paths.

    Files of one layout can be pooled together (`pooled_activations`)."""
    layouts = defaultdict(list)
    for path in paths:
        with open_h5(path) as h5:
            layouts[_header(h5, path)[2]].append(path)
    return dict(layouts)


POOLINGS = ("completion", "prompt_and_completion", "last_prompt")


def _context(h5, path, pooling):
    """(sum over the prompt positions pooled with each completion, their count) for a pooling.
    Reads the file's pooled datasets (mean_hidden_states, last_hidden_states) where it has them,
    else its positions (files written before they existed)."""
    if pooling == "completion":
        return 0.0, 0
    prompt = h5["prompt"] if "prompt" in h5 else None
    if pooling == "last_prompt":
        if prompt is not None and "last_hidden_states" in prompt:
            return prompt["last_hidden_states"][()].astype(np.float64), 1
        return _states(h5, "prompt", path)[:, -1], 1
    if prompt is not None and "mean_hidden_states" in prompt:
        count = int(_attr(prompt, "n_pooled_positions", path))
        return prompt["mean_hidden_states"][()].astype(np.float64) * count, count
    states = _states(h5, "prompt", path)
    context = np.delete(states, int(_attr(h5, "attention_sink_position", path)), axis=1)
    return context.sum(axis=1), context.shape[1]


def _completion_sum(h5, name, path):
    """(sum over a completion's positions, their count), from its mean_hidden_states where stored."""
    group = h5[name]
    if "mean_hidden_states" in group:
        if "token_ids" not in group:
            raise InputError(f"{path}: no dataset {name}/token_ids")
        count = len(group["token_ids"])
        return group["mean_hidden_states"][()].astype(np.float64) * count, count
    states = _states(h5, name, path)
    return states.sum(axis=1), states.shape[1]


def pooled_activations(paths: Iterable[Path | str],
                       pooling: str = "completion") -> tuple[dict[int, np.ndarray], pd.DataFrame]:
    """Pooled hidden states of every completion in the activation files `paths`.

    `pooling`: 'completion' (mean over the completion's positions), 'prompt_and_completion' (mean
    over prompt + completion without the attention-sink position) or 'last_prompt' (the prompt's
    last position, before the first generated token: the same for every rep of a prompt). All files
    must share one layout (see `activation_layouts`). Returns (features: hidden-state index ->
    float32 (n_completions, d), meta: one row per completion with model (the reading model),
    generator (the model that wrote the text), family, size_b, variant, hidden_size, n_layers,
    prompt_id, prompt_type, rep, seed).
    """
    if pooling not in POOLINGS:
        raise InputError(f"unknown pooling {pooling!r}: use one of {POOLINGS}")
    pooled, rows, first = defaultdict(list), [], None
    for path in paths:
        with open_h5(path) as h5:
            model, indices, layout = _header(h5, path)
            first = first or (path, layout)
            if layout != first[1]:
                raise InputError(
                    f"{path}: layout (hidden size, layers, indices) {layout} differs from {first[0]}'s "
                    f"{first[1]}: pool one layout at a time (activation_layouts)")
            writer = json.loads(h5.attrs["generation_model"])["name"] if "generation_model" in h5.attrs else model["name"]
            prompt = {"prompt_id": _attr(h5, "prompt_id", path), "prompt_type": _attr(h5, "prompt_type", path)}
            context_sum, context_len = _context(h5, path, pooling)
            reps = sorted(name for name in h5 if name.startswith("rep_"))
            if not reps:
                raise InputError(f"{path}: no rep_NN groups")
            for name in reps:
                if pooling == "last_prompt":
                    mean = context_sum  # the completion's own positions are not read
                else:
                    total, count = _completion_sum(h5, name, path)
                    mean = (context_sum + total) / (context_len + count)
                for index, vector in zip(indices, mean):
                    pooled[index].append(vector)
                rows.append({
                    "model": model["name"], "generator": writer, **{k: model[k] for k in MODEL_FIELDS},
                    "condition": condition(model), **prompt,
                    "rep": int(_attr(h5[name], "rep", path)), "seed": int(_attr(h5[name], "seed", path)),
                })
    features = {index: np.array(vectors, dtype=np.float32) for index, vectors in pooled.items()}
    return features, pd.DataFrame(rows)


def completion_tokens(paths: Iterable[Path | str]) -> pd.DataFrame:
    """The completion token ids of every completion in the activation files `paths`, as one string
    of space-separated ids per completion: a table with model, prompt_id, rep and tokens."""
    rows = []
    for path in paths:
        with open_h5(path) as h5:
            model = json.loads(_attr(h5, "model", path))["name"]
            for name in sorted(n for n in h5 if n.startswith("rep_")):
                if "token_ids" not in h5[name]:
                    raise InputError(f"{path}: no dataset {name}/token_ids")
                rows.append({"model": model, "prompt_id": _attr(h5, "prompt_id", path),
                             "rep": int(_attr(h5[name], "rep", path)),
                             "tokens": " ".join(map(str, h5[name]["token_ids"][()]))})
    return pd.DataFrame(rows, columns=["model", "prompt_id", "rep", "tokens"])


# --- one probe ----------------------------------------------------------------------------------

def make_probe() -> Pipeline:
    """The probe: standardize, then L2 logistic regression."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))


def grouped_splits(labels: ArrayLike, groups: ArrayLike, n_splits: int = 5,
                   seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]] | None:
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


def shuffled_labels(labels: ArrayLike, groups: ArrayLike, rng: np.random.Generator) -> np.ndarray:
    """Labels permuted across (group, label) cells: each cell's completions keep one label together.

    Repetitions are never treated as independent: a label given per prompt moves with the whole
    prompt, and in base vs instruct each (prompt, model) cell moves as one."""
    codes, cells = pd.factorize(pd.MultiIndex.from_arrays([groups, labels]))
    cell_labels = np.asarray(cells.get_level_values(1))
    return rng.permutation(cell_labels)[codes]


def make_text_probe() -> Pipeline:
    """The text-only baseline: L2 logistic regression on which token ids occur in a completion
    (bag of words over strings of space-separated ids; the vocabulary is learnt per training fold)."""
    return make_pipeline(CountVectorizer(token_pattern=r"\S+", lowercase=False, binary=True),
                         LogisticRegression(max_iter=5000))


def probe(features: ArrayLike, labels: ArrayLike, groups: ArrayLike, n_splits: int = 5, seed: int = 0,
          n_permutations: int = 100, n_jobs: int | None = None,
          estimator: BaseEstimator | None = None) -> dict[str, Any]:
    """Cross-validated accuracy of `estimator` (default `make_probe`) on `features` (n rows),
    folds grouped by `groups`.

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
    estimator = make_probe() if estimator is None else estimator
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


# --- embeddings ---------------------------------------------------------------------------------

def embed(features_2d: ArrayLike, method: str = "pca", seed: int = 0) -> np.ndarray:
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
