"""The work of rule `selfknowledge`, free of Snakemake: one evaluation on one model, its model
loaded once, every item batched; one JSON file of per-item records with its provenance."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..jobs import log, open_model
from ..models import load_tokenizer
from ..storage import versions, write_json
from . import evaluate
from .design import EVALUATIONS
from .texts import load_questions, load_tasks


def _texts(evaluation: str, resources: dict, settings: dict):
    if EVALUATIONS[evaluation].resource == "questions":
        return load_questions(resources["questions"], settings["questions_per_category"])
    return load_tasks(resources["tasks"])


def _provenance(texts) -> dict:
    return {"path": str(texts.path), "version": texts.version, "sha256": texts.sha256}


def run_selfknowledge(manifest_path: Path | str, evaluation: str, output_path: Path | str, settings: dict,
                      resources: dict, runtime: dict, threads: int) -> None:
    """selfknowledge: run `evaluation` on the model of `manifest_path`; `settings` are the
    selfknowledge keys it reads (design.EVALUATIONS). The output holds the records, the model
    record (source, revision, dtype, device), settings, the texts' version and sha256, package
    versions, and the timing (items, seconds, items/s)."""
    spec = EVALUATIONS[evaluation]
    model, manifest, record, load_s = open_model(manifest_path, runtime, threads)
    tokenizer = load_tokenizer(manifest)
    texts = _texts(evaluation, resources, settings)
    run = getattr(evaluate, f"run_{evaluation}")
    arguments = {key: settings[key] for key in spec.settings if key != "questions_per_category"}
    if evaluation == "answer_shift":
        arguments["answer_pairs"] = [tuple(pair) for pair in settings["answer_pairs"]]
    started = time.perf_counter()
    with torch.inference_mode():
        records = run(model, tokenizer, record, texts, **arguments)
    seconds = time.perf_counter() - started
    items = len({r["item"] for r in records})
    log(f"{evaluation}: {len(records)} records over {items} items in {seconds:.1f} s "
        f"({len(records) / seconds:.2f} records/s)")
    write_json(output_path, {
        "evaluation": evaluation, "model": record, "settings": settings, "texts": _provenance(texts),
        "greedy": spec.generates, "records": records, "versions": versions(),
        "timing": {"load_s": load_s, "run_s": seconds, "records": len(records), "items": items,
                   "records_per_s": len(records) / seconds if seconds else None},
    })
