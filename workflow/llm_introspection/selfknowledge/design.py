"""What the self-knowledge study evaluates and what it compares (torch-free: read at parse time).

Every evaluation runs per model; each model is compared with its base: a model whose source is
`{kind: lora, base: <model>}` with that model, else an instruct model with the base model of its
base/instruct pair (records.base_instruct_pairs). Models without either are reported alone.

Steering detection (DETECTION) reads the detection data of the finetuning rules, so it applies only
to models that have some (detection_data): a LoRA model of a trained variant (adapter {variant: V})
is read on its variant's data, and its base on the data of every variant of it whose LoRA model is
evaluated, so each variant is compared with its base on the very same trials.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..records import base_instruct_pairs


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: the resource file it reads (a key of selfknowledge.resources; for detection,
    DETECTION_DATA: the finetuning rules' detection data), the selfknowledge keys its job reads, and
    whether it generates text."""

    name: str
    resource: str
    settings: tuple[str, ...]
    generates: bool


EVALUATIONS = {
    e.name: e
    for e in (
        Evaluation("answer_shift", "questions", ("answer_pairs", "questions_per_category", "batch_size"), False),
        Evaluation("self_prediction", "tasks", ("n_items", "max_new_tokens", "batch_size"), True),
        Evaluation("calibration", "tasks", ("n_items", "max_new_tokens", "batch_size"), True),
        Evaluation("length_prediction", "tasks", ("n_items", "max_new_tokens", "batch_size"), True),
        Evaluation("detection", "detection_data", ("batch_size",), False),
    )
}
# Steer-then-remove detection on the finetuning rules' detection data (the splits read: validation,
# whose directions are the training pool's, and heldout, whose directions are another seed's).
DETECTION = "detection"
DETECTION_DATA = "detection_data"
DETECTION_SPLITS = ("validation", "heldout")


def comparisons(models: dict, evaluated: Iterable[str]) -> list[tuple[str, str, str]]:
    """(variant, base, kind) for every evaluated model with an evaluated base: kind 'lora_vs_base'
    for a LoRA model against `source.base`, 'instruct_vs_base' for a base/instruct pair."""
    evaluated = set(evaluated)
    found = []
    for name in sorted(evaluated):
        source = models[name].get("source", {})
        if source.get("kind") == "lora" and source.get("base") in evaluated:
            found.append((name, source["base"], "lora_vs_base"))
    plain = {n: m for n, m in models.items() if n in evaluated and m.get("source", {}).get("kind") != "lora"}
    found += [(instruct, base, "instruct_vs_base") for base, instruct in base_instruct_pairs(plain)]
    return found


def evaluated_models(models: dict, listed: Iterable[str]) -> list[str]:
    """The listed models and the base of every listed LoRA model (so each has its comparison)."""
    names = list(dict.fromkeys(listed))
    for name in list(names):
        source = models[name].get("source", {})
        if source.get("kind") == "lora" and source.get("base") not in names:
            names.append(source["base"])
    return names


def detection_data(models: dict, evaluated: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
    """Model -> the (data model, variant) detection data it is read on, for the evaluated models
    that have any: a LoRA model whose adapter is {variant: V} -> [(its base, V)]; its base (when
    evaluated) -> every such (itself, V) of the evaluated LoRA models on it, in config order. A
    LoRA model of an adapter directory has no detection data."""
    evaluated = list(dict.fromkeys(evaluated))
    found: dict[str, list[tuple[str, str]]] = {}
    for name in evaluated:
        source = models[name].get("source", {})
        adapter = source.get("adapter")
        if source.get("kind") == "lora" and isinstance(adapter, dict) and "variant" in adapter:
            found.setdefault(name, []).append((source["base"], adapter["variant"]))
    for name, data in list(found.items()):
        base = models[name]["source"]["base"]
        if base in evaluated and data[0] not in found.setdefault(base, []):
            found[base].append(data[0])
    return {name: found[name] for name in evaluated if found.get(name)}
