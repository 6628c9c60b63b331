"""Benchmark of concept injection on the embedded instruct model: trials per second for detection
by generation, detection by the logit metric and localization (one forward pass per trial,
batched), and the cost of a full sweep projected from the measured per-trial times.

Run from the repository root with the .venv active:  python benchmarks/injection.py
It builds the model and its vector file through the workflow if needed, then prints the numbers.
"""

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))

from foundation import snakemake, timed  # noqa: E402
from llm_introspection.injection.cell import open_cell  # noqa: E402
from llm_introspection.injection.concepts import load_vectors  # noqa: E402
from llm_introspection.injection.detection import run_detection_logits, run_detection_responses  # noqa: E402
from llm_introspection.injection.localization import run_localization  # noqa: E402
from llm_introspection.injection.texts import (  # noqa: E402
    load_detection_texts, load_localization_texts, load_neutral_sentences,
)
from llm_introspection.models import load_model, load_tokenizer  # noqa: E402
from llm_introspection.sampling import SamplingParams  # noqa: E402
from llm_introspection.storage import read_json  # noqa: E402

MODEL = "smollm2-135m-instruct"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concepts", type=int, default=4, help="concepts per measured experiment")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    vector_path = REPO / f"results/injection/vectors/{MODEL}/layer0.5.h5"
    snakemake(str(vector_path.relative_to(REPO)))
    manifest = read_json(REPO / f"results/models/{MODEL}/manifest.json")
    model, tokenizer = load_model(manifest, "cpu", torch.float32), load_tokenizer(manifest)
    cell = open_cell(vector_path, MODEL, True, 2.0, load_vectors(vector_path).attrs["mean_norm"])
    concepts = cell.vectors.names[: args.concepts]
    det = load_detection_texts(REPO / "resources/injection/detection.yaml")
    loc = load_localization_texts(REPO / "resources/injection/localization.yaml")
    sentences = load_neutral_sentences(REPO / "resources/concepts/neutral_sentences.yaml")
    params = SamplingParams(0.8, 0.95, args.max_new_tokens)
    batch = args.batch_size
    with torch.inference_mode():
        runs = {
            "detection_responses": timed(lambda: run_detection_responses(
                model, tokenizer, cell, det, params, 1, 0, batch, concepts)),
            "detection_logits": timed(lambda: run_detection_logits(
                model, tokenizer, cell, det, n_variants=2, batch_size=batch, concepts=concepts)),
            "localization": timed(lambda: run_localization(
                model, tokenizer, cell, loc, sentences, 2, 0, batch, concepts=concepts, questions=[loc.introspection])),
        }
    per_trial = {name: seconds / len(records) for name, (records, seconds) in runs.items()}
    print(f"## {MODEL}, CPU, 2 threads, batch {batch}, hidden state {cell.layer}, strength 2")
    print("| experiment | trials | seconds | trials/s |\n|---|---|---|---|")
    for name, (records, seconds) in runs.items():
        print(f"| {name} ({args.max_new_tokens} new tokens)" if name == "detection_responses" else f"| {name}",
              f"| {len(records)} | {seconds:.1f} | {len(records) / seconds:.2f} |")
    # A full sweep: 50 concepts x 5 layers x 4 strengths; per cell, detection_responses has 50
    # injected + 50 control trials, detection_logits 10 wordings x (50 concepts + 50 random + 1
    # control) + 10 control questions x (50 + 1) = 1,520, localization 50 trials x 4 questions x
    # (2 x 5 positions + 1 control) = 2,200 forward passes.
    cells = 5 * 4
    trials = {"detection_responses": 100, "detection_logits": 1520, "localization": 2200}
    projected = {name: cells * n * per_trial[name] for name, n in trials.items()}
    print("\nProjected full sweep (50 concepts x 5 layers x 4 strengths, this machine):")
    for name, seconds in projected.items():
        print(f"- {name}: {cells} cells x {trials[name]} trials -> {seconds / 3600:.2f} h")
    print(f"- total: {sum(projected.values()) / 3600:.2f} h")


if __name__ == "__main__":
    main()
