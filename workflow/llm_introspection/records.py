"""Rows of the study's design, read from the workflow's files."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .storage import read_json

if TYPE_CHECKING:
    import pandas as pd


def condition(model: Mapping[str, Any]) -> str:
    """The model's input condition: 'finetuned' for a LoRA variant (source kind lora: never pooled
    with the base and instruct models of the core comparisons), 'shared_frame' for an instruct
    model given the base continuation frame, else 'native' (a base model's native frame is the
    base frame)."""
    if model.get("source", {}).get("kind") == "lora":
        return "finetuned"
    return "shared_frame" if model["variant"] == "instruct" and model["frame"] == "base" else "native"


def condition_tables(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The rows each condition compares, by its `condition` column: 'native' (models in their
    native frame) and, when the table has shared-frame rows, 'shared_frame' (base models and the
    shared-frame instruct models: every model saw identical input text)."""
    tables = {"native": table[table["condition"] == "native"]}
    if (table["condition"] == "shared_frame").any():
        tables["shared_frame"] = table[(table["condition"] == "shared_frame") | (table["variant"] == "base")]
    return tables


def design_columns(model: Mapping[str, Any], prompt: Mapping[str, Any]) -> dict[str, Any]:
    """The design columns a model record and a prompt record give every completion."""
    return {
        "model": model["name"], "family": model["family"], "size_b": model["size_b"],
        "variant": model["variant"], "condition": condition(model),
        "prompt_id": prompt["id"], "prompt_type": prompt["type"],
    }


def completion_rows(generation_paths: Iterable[Path | str]) -> list[dict[str, Any]]:
    """One record per completion of the given generation files: the design columns, its stop
    reason and its text."""
    rows = []
    for path in generation_paths:
        generation = read_json(path)
        design = design_columns(generation["model"], generation["prompt"])
        for rep in generation["reps"]:
            rows.append(design | {"rep": rep["rep"], "seed": rep["seed"], "stop_reason": rep["stop_reason"],
                                  "text": rep["text"]})
    return rows


def base_instruct_pairs(models: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(base, instruct) name pairs of `models` (name -> record with family, size_b, variant): one
    base and one instruct model of the same family and size, so the instruct model is the base
    fine-tuned and both share one residual basis. A (family, size) with more models pairs none."""
    cells = {}
    for name, model in models.items():
        cells.setdefault((model["family"], model["size_b"]), []).append((model["variant"], name))
    pairs = []
    for members in cells.values():
        variants = dict(members)
        if len(members) == 2 and set(variants) == {"base", "instruct"}:
            pairs.append((variants["base"], variants["instruct"]))
    return sorted(pairs)


def weight_noise_name(base: str) -> str:
    """The name a base model carries when read with weight noise the size of its pair's difference."""
    return f"{base}+weight-noise"
