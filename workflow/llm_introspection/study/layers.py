"""Choosing the layer without reporting the maximum over layers: layer selection on held-out
prompts, and Holm over the whole sweep.

Correction families: `p_holm` (probes.csv) covers the layers of one task and subset; `p_holm_sweep`
covers every estimable row of one probes.csv (all tasks, subsets and layers of the run);
`held_out_layer` removes the optimism of choosing one layer of one task and subset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .probing import _accuracy, grouped_splits, make_probe
from .statistics import holm

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

SELECTION_COLUMNS = (
    "task", "subset", "estimable", "reason", "selected_index_a", "selected_index_b",
    "held_out_accuracy_a", "held_out_accuracy_b", "held_out_accuracy", "max_over_layers", "max_layer",
)


def group_halves(labels: ArrayLike, groups: ArrayLike, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two row masks splitting the groups in half, balanced by each group's mean label code:
    groups ordered by that code (ties in seeded random order) go alternately to either half."""
    codes = pd.Series(pd.factorize(np.asarray(labels))[0]).groupby(np.asarray(groups)).mean()
    tiebreak = np.random.default_rng(seed).random(len(codes))
    order = codes.index[np.lexsort((tiebreak, codes.to_numpy()))]
    first = np.isin(groups, order[::2])
    return first, ~first


def _grouped_accuracy(x, labels, groups, n_splits, seed):
    splits = grouped_splits(labels, groups, n_splits, seed)
    return None if splits is None else float(_accuracy(make_probe(), x, labels, splits))


def held_out_layer(features: Mapping[int, np.ndarray], labels: ArrayLike, groups: ArrayLike, n_splits: int = 5,
                   seed: int = 0) -> dict[str, Any]:
    """Layer selection on held-out prompts: the layer with the best grouped-CV accuracy on one half
    of the prompt groups is scored by grouped CV on the other half, both ways round.

    Returns selected_index_a/_b (chosen on half a / b), held_out_accuracy_a/_b (the chosen layer's
    accuracy on the other half) and their mean held_out_accuracy; or estimable False with a reason
    when a half has too few groups or classes for a grouped split."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    halves = group_halves(labels, groups, seed)
    result = {"estimable": True, "reason": None}
    for name, choose, report in (("a", halves[0], halves[1]), ("b", halves[1], halves[0])):
        scores = {index: _grouped_accuracy(x[choose], labels[choose], groups[choose], n_splits, seed)
                  for index, x in sorted(features.items())}
        if None in scores.values():
            return {"estimable": False, "reason": "a half of the prompt groups has no grouped split with two classes"}
        chosen = max(scores, key=scores.get)  # the first (shallowest) of tied layers
        held = _grouped_accuracy(features[chosen][report], labels[report], groups[report], n_splits, seed)
        if held is None:
            return {"estimable": False, "reason": "a half of the prompt groups has no grouped split with two classes"}
        result |= {f"selected_index_{name}": chosen, f"held_out_accuracy_{name}": held}
    result["held_out_accuracy"] = (result["held_out_accuracy_a"] + result["held_out_accuracy_b"]) / 2
    return result


def sweep_holm(table: pd.DataFrame) -> pd.Series:
    """Holm-adjusted permutation p-values over every row of `table` that has one (the whole sweep)."""
    return pd.Series(holm(table["p_value"].astype(float))[0], index=table.index)
