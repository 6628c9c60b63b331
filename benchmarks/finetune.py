"""Benchmark of introspection finetuning on the embedded instruct model (CPU, 2 threads): the
steer-then-remove read-out (examples/s), one LoRA step on detection examples (batch 8: the first
turn's cache without gradient, then the question and prefill with gradient), and a plain LoRA step
on batch 8 x 11 tokens for comparison. Wall and process CPU seconds (CPU counts both threads: on a
busy machine it is the steadier number).

Run from the repository root with the .venv active:  python benchmarks/finetune.py
[--manifest results/models/smollm2-135m-instruct/manifest.json]; without --manifest it prepares the
model through the workflow.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))

from foundation import snakemake  # noqa: E402
from llm_introspection.finetune.data import (  # noqa: E402
    build_splits, example_ids, mean_residual_norms, options_frame, random_directions,
)
from llm_introspection.finetune.design import Variant, layer_ranges  # noqa: E402
from llm_introspection.finetune.steer_remove import answer_logits, read_answers, steered_cache  # noqa: E402
from llm_introspection.finetune.texts import load_detection_texts  # noqa: E402
from llm_introspection.finetune.training import add_lora  # noqa: E402
from llm_introspection.models import load_model, load_tokenizer  # noqa: E402
from llm_introspection.storage import read_json  # noqa: E402

MODEL = "smollm2-135m-instruct"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
RANGES = {"early": [0.0, 0.333], "middle": [0.333, 0.667], "late": [0.667, 1.0]}


def clocked(function, repeats):
    """Median wall and CPU seconds of `repeats` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", default=f"results/models/{MODEL}/manifest.json")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    manifest_path = Path(args.manifest)
    if not manifest_path.is_file():
        snakemake(str(manifest_path))
    manifest = read_json(manifest_path)
    if not Path(manifest["load_path"]).is_absolute():
        manifest["load_path"] = str(manifest_path.parents[3] / manifest["load_path"])
    model, tokenizer = load_model(manifest, "cpu", torch.float32), load_tokenizer(manifest)
    texts = load_detection_texts(REPO / "resources/finetune/detection.yaml")
    frame = options_frame(tokenizer, texts, "yes_no", True)
    pairs = [example_ids(tokenizer, c, texts.question("detection", "yes_no"), True, frame.prefill, texts.path)
             for c in texts.contexts]
    turn1, question_ids = [first for first, _ in pairs], pairs[0][1]
    ranges = layer_ranges(RANGES, 0.5, manifest["n_layers"], "thirds")
    norms = mean_residual_norms(model, sorted({h for r in ranges.values() for h in r}), turn1, args.batch_size)
    directions = {p: random_directions(8, manifest["hidden_size"], s) for p, s in (("train", 1), ("heldout", 2))}
    batch = args.batch_size
    examples = build_splits(Variant("original"), {"train": 2 * batch, "validation": 2, "heldout": 2}, directions,
                            [0.1, 0.2, 0.3], ranges, norms, turn1, 0.02, 0)["train"]
    read = clocked(lambda: read_answers(model, examples, question_ids, directions, frame.option_ids, batch),
                   args.repeats)
    peft_model = add_lora(model, LORA, 0)
    inner = peft_model.get_base_model()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-4)
    targets = torch.tensor([frame.option_ids[e["label"]] for e in examples[:batch]])

    def detection_step():
        peft_model.eval()
        cache, mask = steered_cache(inner, examples[:batch], directions)
        peft_model.train()
        loss = torch.nn.functional.cross_entropy(answer_logits(inner, cache, mask, question_ids).float(), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    short = torch.randint(100, 1000, (batch, 11))

    def plain_step():
        peft_model.train()
        loss = peft_model(input_ids=short, labels=short).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step, plain = clocked(detection_step, args.repeats), clocked(plain_step, args.repeats)
    tokens = (statistics.mean(map(len, turn1)), len(question_ids))
    print(f"## {MODEL}, CPU, 2 threads, batch {batch}; first turn ~{tokens[0]:.0f} tokens, question + prefill "
          f"{tokens[1]} tokens")
    print("| what | wall s | CPU s |\n|---|---|---|")
    print(f"| steer-then-remove read-out, {len(examples)} examples | {read[0]:.2f} | {read[1]:.2f} |")
    print(f"| LoRA step on detection examples (batch {batch}) | {step[0]:.2f} | {step[1]:.2f} |")
    print(f"| plain LoRA step, batch {batch} x 11 tokens | {plain[0]:.2f} | {plain[1]:.2f} |")


if __name__ == "__main__":
    main()
