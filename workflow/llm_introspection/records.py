"""Rows of the study's design, read from the workflow's files, and CSV output."""

from .storage import atomic_path, read_json


def design_columns(model, prompt):
    """The design columns a model record and a prompt record give every completion."""
    return {
        "model": model["name"], "family": model["family"], "size_b": model["size_b"],
        "variant": model["variant"], "prompt_id": prompt["id"], "prompt_type": prompt["type"],
    }


def completion_rows(generation_paths):
    """One record per completion of the given generation files: the design columns and its text."""
    rows = []
    for path in generation_paths:
        generation = read_json(path)
        design = design_columns(generation["model"], generation["prompt"])
        for rep in generation["reps"]:
            rows.append(design | {"rep": rep["rep"], "seed": rep["seed"], "text": rep["text"]})
    return rows


def write_csv(path, table):
    """Write a DataFrame as CSV atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
