"""LoRA finetuning on the detection data: the answer token is the only target.

Each step builds the first turns' key/value cache under steering without gradient (the adapter in
eval mode, as at inference), removes the hooks, and runs the question turn on that cache with
gradient: the loss is the cross-entropy of the label's option token at the answer position. After
every epoch the validation split is read the same way; the kept checkpoint is chosen by a stated
criterion, and every step's loss and every epoch's validation are returned for the record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import InputError
from .steer_remove import answer_logits, read_answers, steered_cache

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

CRITERIA = ("validation_accuracy", "last")


def add_lora(model: PreTrainedModel, lora: dict, seed: int) -> PeftModel:
    """`model` wrapped by peft with a fresh LoRA adapter (r, alpha, dropout on the target
    modules; A initialised from `seed`, B zero, so the wrapped model starts as the base model)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], bias="none",
                        target_modules=list(lora["target_modules"]), task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise InputError(f"config key 'finetune.lora.target_modules': {error}") from None


def evaluate(model: PreTrainedModel, examples: Sequence[dict], question_ids: Sequence[int], directions: dict,
             option_ids: Sequence[int], batch_size: int) -> dict:
    """Accuracy (the label's option more probable than the other), mean loss (-log P of the label's
    token, full softmax), mean P(label) renormalised over the options, and mean option mass."""
    log_probs = read_answers(model, examples, question_ids, directions, option_ids, batch_size)
    labels = np.array([e["label"] for e in examples])
    rows = np.arange(len(labels))
    probs = np.exp(log_probs)
    return {
        "accuracy": float(np.mean(log_probs.argmax(1) == labels)),
        "loss": float(np.mean(-log_probs[rows, labels])),
        "p_label": float(np.mean(probs[rows, labels] / probs.sum(1))),
        "option_mass": float(np.mean(probs.sum(1))),
        "n": int(len(labels)),
    }


def _better(row, best, criterion):
    if best is None or criterion == "last":
        return True
    return (row["accuracy"], -row["loss"]) > (best["accuracy"], -best["loss"])


def train_lora(peft_model: PeftModel, train: Sequence[dict], validation: Sequence[dict], question_ids: Sequence[int],
               directions: dict, option_ids: Sequence[int], settings: dict,
               log: Callable[[str], None] = print) -> dict:
    """Train the adapter of `peft_model` in place: settings epochs, batch_size, learning_rate,
    seed, keep (CRITERIA). Returns losses (one row per step), validation (one row per epoch, epoch 0
    before training) and kept (the kept checkpoint's epoch, step, criterion and its validation
    row); the adapter holds the kept weights on return."""
    if settings["keep"] not in CRITERIA:
        raise InputError(f"config key 'finetune.keep': {settings['keep']!r} is not one of {CRITERIA}")
    inner = peft_model.get_base_model()  # the LoRA layers sit inside it: hooks and calls go to it
    params = {name: p for name, p in peft_model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(list(params.values()), lr=settings["learning_rate"], weight_decay=0.0)
    targets = torch.tensor([option_ids[e["label"]] for e in train], device=inner.device)
    batch_size, step = settings["batch_size"], 0
    torch.manual_seed(settings["seed"])  # LoRA dropout
    peft_model.eval()
    validation_rows = [{"epoch": 0, "step": 0} | evaluate(inner, validation, question_ids, directions, option_ids, batch_size)]
    losses, best, kept_weights = [], None, None
    for epoch in range(1, settings["epochs"] + 1):
        order = np.random.default_rng([settings["seed"], epoch]).permutation(len(train))
        for begin in range(0, len(order), batch_size):
            rows = order[begin : begin + batch_size]
            peft_model.eval()
            cache, mask = steered_cache(inner, [train[i] for i in rows], directions)
            peft_model.train()
            logits = answer_logits(inner, cache, mask, question_ids)
            loss = torch.nn.functional.cross_entropy(logits.float(), targets[torch.as_tensor(rows)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append({"epoch": epoch, "step": step, "loss": loss.item(), "n": len(rows)})
        peft_model.eval()
        row = {"epoch": epoch, "step": step} | evaluate(inner, validation, question_ids, directions, option_ids,
                                                        batch_size)
        validation_rows.append(row)
        log(f"epoch {epoch}: train loss {np.mean([r['loss'] for r in losses if r['epoch'] == epoch]):.4f}, "
            f"validation accuracy {row['accuracy']:.3f}, loss {row['loss']:.4f}")
        if _better(row, best, settings["keep"]):
            best, kept_weights = row, {name: p.detach().clone() for name, p in params.items()}
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(kept_weights[name])
    kept = {"epoch": best["epoch"], "step": best["step"], "criterion": settings["keep"], "validation": best,
            "rule": ("the epoch with the highest validation accuracy (ties: lower validation loss, then the "
                     "earlier epoch); the untrained epoch 0 is not a candidate")
            if settings["keep"] == "validation_accuracy" else "the last epoch"}
    return {"losses": losses, "validation": validation_rows, "kept": kept}
