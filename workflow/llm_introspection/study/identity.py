"""What the base-vs-instruct probe reads, per base/instruct pair.

An instruct model is its base fine-tuned, so both read text in one residual basis. Each model of a
pair reads both models' generations (rule trace_cross), and the base model reads its own once more
with Gaussian weight noise of the norm of the pair's difference (rule trace_noise). On those
identical token sequences:
- identical_text_reader: which model reads the text (text cannot explain the accuracy);
- weight_noise_calibration: the base model vs its noisy copy on the base model's text: what any
  two weight sets that far apart give, the floor to compare identical_text_reader with;
- identical_text_generator: within one reading model, which model wrote the text (weights cannot
  explain the accuracy: only content can);
- direction_content: the projection of each model's completions on the instruct-minus-base
  direction against the keyword self-reference code, per prompt (Spearman).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ..records import base_instruct_pairs, condition, weight_noise_name
from .probing import file_models, pooled_activations
from .tasks import LABEL_KEYS, NO_PAIR, not_estimable, run_subsets

TASKS = ("identical_text_reader", "weight_noise_calibration", "identical_text_generator")


def pair_subsets(meta: pd.DataFrame, base: str, instruct: str) -> list[tuple[str, str, pd.Series, str]]:
    """(task, subset name, row mask, target column) of the identity probes of one pair; meta holds
    the reading model (model) and the writing model (generator) of every row."""
    pair, noisy = f"pair={base}/{instruct}", weight_noise_name(base)
    readers, writers = meta["model"], meta["generator"]
    both = readers.isin([base, instruct]) & writers.isin([base, instruct])
    return [
        ("identical_text_reader", f"{pair}, text={base}", both & (writers == base), "model"),
        ("identical_text_reader", f"{pair}, text=both", both, "model"),
        ("weight_noise_calibration", f"{pair}, text={base}", readers.isin([base, noisy]) & (writers == base), "model"),
        ("identical_text_generator", f"{pair}, reader={base}", both & (readers == base), "generator"),
        ("identical_text_generator", f"{pair}, reader={instruct}", both & (readers == instruct), "generator"),
    ]


def identity_probes(features: Mapping[int, np.ndarray], meta: pd.DataFrame, base: str, instruct: str,
                    **probe_options: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The identity probes of one pair (TASKS) at every layer: (table, held-out layer selection).

    `features`, `meta` as from `pooled_activations` over the pair's native, cross and noise
    activation files. A subset whose rows hold one class (a missing trace) is not estimable."""
    parts = []
    for task, subset, mask, target in pair_subsets(meta, base, instruct):
        rows = meta[mask]
        texts = {frozenset(zip(g["generator"], g["prompt_id"], g["rep"])) for _, g in rows.groupby("model")}
        if rows[target].nunique() < 2:
            reason = f"{subset}: the traces give one class of {target} (a missing trace)"
        elif target == "model" and len(texts) > 1:
            reason = f"{subset}: the readers did not read the same texts (a missing identical-text trace)"
        else:
            reason = None
        parts.append(not_estimable(task, reason, subset) if reason else
                     run_subsets(task, [(subset, mask.to_numpy())], features, meta, target, None, **probe_options))
    tables, selections = zip(*parts)
    return pd.concat(tables, ignore_index=True), pd.concat(selections, ignore_index=True)


def direction_content(features: Mapping[int, np.ndarray], meta: pd.DataFrame, codes: pd.DataFrame, base: str,
                      instruct: str) -> list[dict[str, Any]]:
    """Per layer and model of the pair: Spearman correlation over prompts between the mean
    projection of the model's own completions on the unit instruct-minus-base direction (the
    difference of the two models' mean pooled states) and the prompt's mean code.

    `codes`: a table keyed by model, prompt_id, rep with a column `code`."""
    own = (meta["model"] == meta["generator"]).to_numpy()
    merged = meta[LABEL_KEYS].merge(codes, on=LABEL_KEYS, how="left", validate="many_to_one")["code"].to_numpy(float)
    rows = []
    for index, x in sorted(features.items()):
        direction = x[own & (meta["model"] == instruct).to_numpy()].mean(0) - x[own & (meta["model"] == base).to_numpy()].mean(0)
        unit = direction / np.linalg.norm(direction)
        for model in (base, instruct):
            mask = own & (meta["model"] == model).to_numpy() & ~np.isnan(merged)
            per_prompt = pd.DataFrame({"projection": x[mask] @ unit, "code": merged[mask],
                                       "prompt_id": meta["prompt_id"].to_numpy()[mask]}).groupby("prompt_id").mean()
            row = {"pair": f"{base}/{instruct}", "model": model, "hidden_state_index": index, "n_prompts": len(per_prompt)}
            if len(per_prompt) < 3 or per_prompt["code"].nunique() < 2:
                rows.append(row | {"estimable": False, "reason": "fewer than 3 prompts or one mean code over prompts"})
                continue
            rho, p = spearmanr(per_prompt["projection"], per_prompt["code"])
            rows.append(row | {"estimable": True, "spearman": float(rho), "p_value": float(p)})
    return rows


def pair_analysis(
    native_paths: Sequence[Path | str], cross_paths: Sequence[Path | str], noise_paths: Sequence[Path | str],
    codes: pd.DataFrame, **probe_options: Any,
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, Any]], list[tuple[str, str]]]:
    """identity_probes and direction_content of every base/instruct pair among the models of the
    native activation files: (table, selection, direction rows, pairs). Without a pair every
    identity task is one not-estimable row."""
    readers = file_models([*native_paths, *cross_paths, *noise_paths])
    native = {r["name"]: r for r in readers[: len(native_paths)] if condition(r) == "native"}
    pairs = base_instruct_pairs(native)
    if not pairs:
        parts = [not_estimable(task, NO_PAIR) for task in TASKS]
        tables, selections = zip(*parts)
        return pd.concat(tables, ignore_index=True), pd.concat(selections, ignore_index=True), [], []
    tables, selections, direction = [], [], []
    paths = [*native_paths, *cross_paths, *noise_paths]
    for base, instruct in pairs:
        mine = [p for p, r in zip(paths, readers) if r["name"] in (base, instruct, weight_noise_name(base))]
        features, meta = pooled_activations(mine)
        table, selection = identity_probes(features, meta, base, instruct, **probe_options)
        tables.append(table.assign(hidden_size=meta["hidden_size"].iloc[0], n_layers=meta["n_layers"].iloc[0]))
        selections.append(selection)
        direction += direction_content(features, meta, codes, base, instruct)
    return pd.concat(tables, ignore_index=True), pd.concat(selections, ignore_index=True), direction, pairs
