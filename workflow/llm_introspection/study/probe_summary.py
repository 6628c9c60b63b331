"""The summary of the probes, probing_statistics.json: held-out layer selection, what each
correction covers, the identity analyses of base/instruct pairs and the self-reference probe
against its text-only baseline."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from .tasks import NO_PAIR

CORRECTIONS = {
    "p_holm": "Holm over the layers of one task and subset (probes.csv)",
    "p_holm_sweep": "Holm over every row of probes.csv with a permutation p-value: all tasks, subsets and layers "
                    "of this run",
    "held_out_accuracy": "layer_selection: the layer is chosen on one half of the prompt groups and scored by grouped "
                         "cross-validation on the other, both ways round (mean); it removes the optimism of reporting "
                         "the best layer of one task and subset. max_over_layers is that optimistic number, for comparison",
}
CALIBRATION = (
    "The base model with Gaussian noise added to every weight tensor, of the Frobenius norm of that tensor's difference "
    "from the instruct model (a random direction of the pair's size), reads the base model's own generations; the probe "
    "separating it from the base model on the same text is the floor of what two weight sets that far apart give. "
    "Chosen over the instruct model with and without the shared-frame switch, which holds the weights fixed and varies "
    "the text, so it calibrates the template, not the weights. At ceiling (both near 1) the margin says only that the "
    "pair is as separable as noise of its size."
)


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame to JSON-ready records (NaN becomes null)."""
    return json.loads(frame.to_json(orient="records"))


def _task(frame, task):
    return frame[frame["task"] == task]


def _estimable(rows, reason):
    """{'estimable', 'reason', 'rows'}: estimable when some row is."""
    ok = bool(len(rows)) and bool(rows["estimable"].astype(bool).any())
    reasons = sorted(set(rows["reason"].dropna())) if len(rows) else [reason]
    return {"estimable": ok, "reason": None if ok else "; ".join(reasons) or reason, "rows": records(rows)}


def calibration_margin(table: pd.DataFrame) -> pd.DataFrame:
    """Per pair and layer: identical_text_reader on the base model's text against
    weight_noise_calibration on the same text, and the margin between them."""
    columns = ["subset", "hidden_state_index", "accuracy", "p_value"]
    reader = _task(table, "identical_text_reader")[columns]
    noise = _task(table, "weight_noise_calibration")[columns]
    joined = reader.merge(noise, on=["subset", "hidden_state_index"], suffixes=("_pair", "_noise"))
    return joined.assign(margin=joined["accuracy_pair"] - joined["accuracy_noise"])


def identity_summary(table: pd.DataFrame, selection: pd.DataFrame, direction: list[dict[str, Any]],
                     pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The identity section: pairs, identical-text probes, the weight-difference calibration and
    the instruct-minus-base direction against content, each with its reason when not estimable."""
    if not pairs:
        reason = f"not estimable: {NO_PAIR}"
        return {"pairs": [], "identical_text": reason, "weight_difference_calibration": reason,
                "direction_content": reason, "pooled_across_families": "never"}
    margin = calibration_margin(table)
    return {
        "pairs": [list(p) for p in pairs],
        "pooled_across_families": "never: models of different families have unrelated residual coordinates",
        "identical_text": {
            "reader": _estimable(_task(selection, "identical_text_reader"), "no identical-text trace"),
            "generator": _estimable(_task(selection, "identical_text_generator"), "no identical-text trace"),
        },
        "weight_difference_calibration": {
            "method": CALIBRATION,
            "selection": _estimable(_task(selection, "weight_noise_calibration"), "no weight-noise trace"),
            "by_layer": records(margin) if len(margin) else "not estimable: no layer has both probes",
        },
        "direction_content": {
            "method": "Spearman over prompts: the mean projection of a model's own completions on the unit "
                      "instruct-minus-base direction vs the prompt's mean keyword self-reference code",
            "rows": direction,
        },
    }


def self_reference_summary(table: pd.DataFrame, selection: pd.DataFrame) -> dict[str, Any]:
    """The self-reference probe beside its text-only baseline and the pre-generation probe; what the
    residual stream adds is the held-out activation accuracy minus the text-only accuracy."""
    text = _task(table, "self_reference_text_only")
    activation = _task(selection, "self_reference_content")[["subset", "held_out_accuracy"]]
    before = _task(selection, "self_reference_pre_generation")[["subset", "held_out_accuracy"]]
    added = (activation.merge(text[["subset", "accuracy"]].rename(columns={"accuracy": "text_only_accuracy"}), on="subset")
             .merge(before.rename(columns={"held_out_accuracy": "pre_generation_held_out_accuracy"}), on="subset", how="left"))
    added["activation_minus_text"] = added["held_out_accuracy"] - added["text_only_accuracy"]
    return {
        "text_only_baseline": _estimable(text, "no labels or tokens"),
        "pre_generation": _estimable(_task(selection, "self_reference_pre_generation"), "no prompt states"),
        "residual_over_text": records(added),
    }


def probing_summary(table: pd.DataFrame, selection: pd.DataFrame, direction: list[dict[str, Any]],
                    pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The parts of probing_statistics.json computed from the probes."""
    return {
        "corrections": CORRECTIONS,
        "layer_selection": records(selection),
        "identity": identity_summary(table, selection, direction, pairs),
        "self_reference_text": self_reference_summary(table, selection),
        "not_estimable": records(table[~table["estimable"].astype(bool)][["task", "subset", "reason"]].drop_duplicates()),
    }
