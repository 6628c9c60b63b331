"""The work of rule `selfknowledge`, free of Snakemake: one evaluation on one model, its model
loaded once, every item batched; one JSON file of per-item records with its provenance. Detection
reads the finetuning rules' detection data (its splits and directions files, named with their
sha256) instead of a resource file."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..jobs import log, open_model
from ..models import load_tokenizer
from ..finetune.design import Variant, steered_option
from ..finetune.jobs import read_directions
from ..injection.sweep import file_digest
from ..storage import read_json, versions, write_json
from . import evaluate
from .design import DETECTION_DATA, DETECTION_SPLITS, EVALUATIONS
from .texts import load_questions, load_tasks


@dataclass(frozen=True)
class DetectionData:
    """The detection data one model is read on: per variant, its splits' files and directions."""

    sets: list  # per variant: {"variant", "splits": {split: file content}, "directions": {pool: array}}
    files: dict  # variant -> {split or "directions": {"path", "sha256"}}

    def provenance(self) -> dict:
        return {"variants": {entry["variant"]: {
            "files": self.files[entry["variant"]], "data_model": next(iter(entry["splits"].values()))["model"]["name"],
            "texts": next(iter(entry["splits"].values()))["texts"],
            "steered_answer": {split: c["options"][steered_option(Variant(**c["variant"]))]
                               for split, c in entry["splits"].items()}} for entry in self.sets}}


def load_detection_data(resources: dict) -> DetectionData:
    """`resources`: variant -> {split (design.DETECTION_SPLITS): data file, "directions": directions
    file}, as rule detection_data wrote them."""
    sets, files = [], {}
    for variant, paths in resources.items():
        splits = {split: read_json(paths[split]) for split in DETECTION_SPLITS}
        sets.append({"variant": variant, "splits": splits, "directions": read_directions(paths["directions"])})
        files[variant] = {key: {"path": str(path), "sha256": file_digest(path)} for key, path in paths.items()}
    return DetectionData(sets, files)


def _texts(evaluation: str, resources: dict, settings: dict):
    resource = EVALUATIONS[evaluation].resource
    if resource == DETECTION_DATA:
        return load_detection_data(resources)
    if resource == "questions":
        return load_questions(resources["questions"], settings["questions_per_category"])
    return load_tasks(resources["tasks"])


def _provenance(texts) -> dict:
    if isinstance(texts, DetectionData):
        return texts.provenance()
    return {"path": str(texts.path), "version": texts.version, "sha256": texts.sha256}


def run_selfknowledge(manifest_path: Path | str, evaluation: str, output_path: Path | str, settings: dict,
                      resources: dict, runtime: dict, threads: int, *, template_date: str | None) -> None:
    """selfknowledge: run `evaluation` on the model of `manifest_path`; `settings` are the
    selfknowledge keys it reads (design.EVALUATIONS). The output holds the records, the model
    record (source, revision, dtype, device), settings, the texts' version and sha256, package
    versions, and the timing (items, seconds, items/s). A chat template is rendered as on
    `template_date` (the model record says it)."""
    spec = EVALUATIONS[evaluation]
    model, manifest, record, load_s = open_model(manifest_path, runtime, threads, template_date)
    tokenizer = load_tokenizer(manifest)
    texts = _texts(evaluation, resources, settings)
    run = getattr(evaluate, f"run_{evaluation}")
    arguments = {key: settings[key] for key in spec.settings if key != "questions_per_category"}
    arguments["template_date"] = template_date
    if evaluation == "answer_shift":
        arguments["answer_pairs"] = [tuple(pair) for pair in settings["answer_pairs"]]
    started = time.perf_counter()
    with torch.inference_mode():
        records = run(model, tokenizer, record, texts.sets if evaluation == "detection" else texts, **arguments)
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
