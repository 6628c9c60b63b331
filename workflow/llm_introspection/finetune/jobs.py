"""The work of the finetuning rules, free of Snakemake: `detection_data` writes the steer-then-remove
examples of one (model, variant), `finetune` trains its LoRA adapter on them."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from ..injection.sweep import file_digest
from ..injection.texts import load_concept_words
from ..jobs import log, open_model
from ..models import ADAPTER_FILES, adapter_sha256, load_tokenizer
from ..prompts import uses_chat_template
from ..storage import atomic_h5, open_h5, read_json, set_attrs, versions, write_csv, write_json
from .data import build_splits, concept_directions, example_ids, mean_residual_norms, options_frame, random_directions
from .steer_remove import read_answers
from .design import SPLITS, Variant, check_balance, check_variant, layer_ranges
from .texts import load_detection_texts
from .training import add_lora, train_lora

if TYPE_CHECKING:
    from peft import PeftModel

DESCRIPTION = (
    "Steer-then-remove detection examples of one split. Each example: turn1_ids (the first turn, read "
    "with `strengths[i]` x the unit direction `direction` of pool `direction_set` added at hidden-state "
    "index `layers[i]` on every position when `steered`), then question_ids (the header's; question and "
    "prefill) read from that key/value cache with the hooks removed; the answer is the next token, option "
    "`label` of `option_ids` (0 = A). design_steered is the example's cell (no-steering variants apply "
    "nothing); magnitude = strength / the layer's mean residual norm; corrupted = the variant changed the "
    "label; base_log_probs (held-out split only) = the unfinetuned model's option log-probabilities (full "
    "softmax).")


def read_directions(path: Path | str) -> dict:
    """Pool name -> (n, d) float32 unit directions of a directions file."""
    with open_h5(path) as h5:
        return {name: h5[name][()] for name in ("train", "heldout")}


def run_detection_data(manifest_path: Path | str, texts_path: Path | str, concepts_path: Path | str, variant_name: str,
                       variant_entry: dict, settings: dict, runtime: dict, threads: int, outputs: dict, *,
                       template_date: str | None) -> None:
    """detection_data: the examples of every split (outputs train, validation, heldout: JSON) and
    the directions (outputs directions: HDF5) of one (model, variant); fails when a split's labels
    are off balance. The unfinetuned model's answers are recorded with every held-out example. A
    chat template is rendered as on `template_date` (the model record says it)."""
    model, manifest, record, _ = open_model(manifest_path, runtime, threads, template_date)
    tokenizer = load_tokenizer(manifest)
    texts = load_detection_texts(texts_path)
    variant = Variant.from_config(variant_name, variant_entry)
    check_variant(variant, texts.questions, texts.answers)
    chat = uses_chat_template(record["variant"], record["frame"])
    frame = options_frame(tokenizer, texts, variant.answers, chat)
    question = texts.question(variant.question, variant.answers)
    pairs = [example_ids(tokenizer, c, question, chat, frame.prefill, texts.path, template_date=template_date)
             for c in texts.contexts]
    turn1 = [first for first, _ in pairs]
    if len({tuple(q) for _, q in pairs}) != 1:
        raise ValueError(f"the question turn tokenizes differently after different contexts: {pairs}")
    question_ids = pairs[0][1]
    started = time.perf_counter()
    ranges = layer_ranges(settings["layer_ranges"], settings["single_layer"], record["n_layers"], variant.layers)
    indices = sorted({h for layers in ranges.values() for h in layers})
    norms = mean_residual_norms(model, indices, turn1, settings["batch_size"])
    counts, width = settings["n_directions"], record["hidden_size"]
    if variant.steering == "concepts":
        middle = max(1, int(round(settings["single_layer"] * record["n_layers"])))
        pools = concept_directions(model, tokenizer, load_concept_words(concepts_path), record, middle, counts,
                                   settings["batch_size"], template_date=template_date)
    else:
        pools = {pool: ([], random_directions(counts[pool], width, settings["direction_seeds"][pool]))
                 for pool in ("train", "heldout")}
    directions = {pool: vectors for pool, (_, vectors) in pools.items()}
    sizes = {split: settings["n_examples"][split] for split in SPLITS}
    splits = build_splits(variant, sizes, directions, settings["magnitudes"], ranges, norms, turn1,
                          settings["label_tolerance"], settings["seed"])
    header = {
        "model": record, "variant": vars(variant), "texts": texts.provenance(), "settings": settings,
        "question": question, "prefill": frame.prefill, "question_ids": question_ids,
        "options": list(texts.answers[variant.answers]), "option_ids": list(frame.option_ids),
        "option_tokens": tokenizer.convert_ids_to_tokens(list(frame.option_ids)),
        "layer_ranges": ranges, "layer_norms": {str(h): norms[h] for h in indices},
        "direction_kind": "concepts" if variant.steering == "concepts" else "random",
        "versions": versions(), "description": DESCRIPTION,
    }
    # The unfinetuned model's answers on the held-out examples (its validation answers are epoch 0 of
    # the finetune rule's validation.csv; the train split's would cost a pass each and serve nothing).
    log_probs = read_answers(model, splits["heldout"], question_ids, directions, frame.option_ids,
                             settings["batch_size"])
    for example, row in zip(splits["heldout"], log_probs):
        example["base_log_probs"] = row.tolist()
    for split, examples in splits.items():
        share = check_balance([e["label"] for e in examples], variant.expected_share, settings["label_tolerance"],
                              f"variant {variant.name}, split {split}")
        write_json(outputs[split], header | {"split": split, "share_option_a": share, "examples": examples})
    with atomic_h5(outputs["directions"]) as h5:
        set_attrs(h5, {"model": record, "variant": vars(variant), "kind": header["direction_kind"],
                       "seeds": settings["direction_seeds"], "names": {p: n for p, (n, _) in pools.items()},
                       "versions": versions()})
        h5.attrs["description"] = ("Unit directions (n, d) float32 of the train pool (train and validation "
                                   "examples) and the held-out pool (heldout examples).")
        for pool, vectors in directions.items():
            h5.create_dataset(pool, data=vectors)
    log(f"detection data of {record['name']}, variant {variant.name}: "
        f"{', '.join(f'{s} {len(e)}' for s, e in splits.items())} examples in {time.perf_counter() - started:.1f} s")


def save_adapter(peft_model: PeftModel, name: str, adapter_dir: Path | str) -> None:
    """The adapter's ADAPTER_FILES into `adapter_dir`, each written to a temporary name and renamed
    (the base model is named by its model key, not a path)."""
    adapter_dir = Path(adapter_dir)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    peft_model.peft_config["default"].base_model_name_or_path = name
    with tempfile.TemporaryDirectory(dir=adapter_dir.parent, prefix=".tmp-save-") as tmp:
        peft_model.save_pretrained(tmp, save_embedding_layers=False)
        for file in ADAPTER_FILES:
            os.replace(Path(tmp) / file, adapter_dir / file)


def run_finetune(manifest_path: Path | str, data_paths: dict, directions_path: Path | str, outputs: dict,
                 settings: dict, runtime: dict, threads: int) -> None:
    """finetune: train a LoRA adapter on the train split, validate on the validation split every
    epoch, keep the checkpoint the criterion picks; write the adapter (outputs adapter_dir), the
    loss curve (losses: CSV), validation per epoch (validation: CSV) and the provenance (JSON)."""
    model, _, record, _ = open_model(manifest_path, runtime, threads)
    data = {split: read_json(data_paths[split]) for split in ("train", "validation")}
    header = data["train"]
    directions = read_directions(directions_path)
    peft_model = add_lora(model, settings["lora"], settings["seed"])
    started = time.perf_counter()
    result = train_lora(peft_model, data["train"]["examples"], data["validation"]["examples"], header["question_ids"],
                        directions, header["option_ids"], settings, log)
    train_s = time.perf_counter() - started
    n_steps = len(result["losses"])
    log(f"trained {n_steps} steps in {train_s:.1f} s ({train_s / max(n_steps, 1):.2f} s/step); kept epoch "
        f"{result['kept']['epoch']} (step {result['kept']['step']})")
    save_adapter(peft_model, record["name"], outputs["adapter_dir"])
    write_csv(outputs["losses"], pd.DataFrame(result["losses"]))
    write_csv(outputs["validation"], pd.DataFrame(result["validation"]))
    write_json(outputs["provenance"], {
        "model": record, "variant": header["variant"], "settings": settings,
        "template_date": header["model"].get("template_date"),  # the date its examples were rendered as on
        "data": {split: {"path": str(data_paths[split]), "sha256": file_digest(data_paths[split])} for split in data_paths}
        | {"directions": {"path": str(directions_path), "sha256": file_digest(directions_path)}},
        "kept": result["kept"], "validation": result["validation"],
        "adapter": {"path": str(outputs["adapter_dir"]), "sha256": adapter_sha256(outputs["adapter_dir"]),
                    "trainable_parameters": int(sum(p.numel() for p in peft_model.parameters() if p.requires_grad))},
        "timings": {"train_s": train_s, "steps": n_steps, "s_per_step": train_s / max(n_steps, 1)},
        "torch_threads": torch.get_num_threads(), "versions": versions(),
    })

