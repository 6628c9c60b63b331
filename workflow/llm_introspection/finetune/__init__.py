"""Introspection finetuning: steer-then-remove detection data and LoRA adapters trained on it.

Public: the design (Variant, check_balance, layer_ranges, SPLITS), the texts
(load_detection_texts), the read-out from a steered key/value cache (steered_cache,
answer_logits, read_answers), the data files (read_directions) and the jobs (run_detection_data,
run_finetune). The evaluations of finetuned variants read a variant's held-out examples with
`read_json` and `read_directions` and score them with `read_answers`.
"""

from .design import SPLITS, Variant, check_balance, layer_ranges
from .texts import load_detection_texts

__all__ = [
    "SPLITS", "Variant", "answer_logits", "check_balance", "layer_ranges", "load_detection_texts", "read_answers",
    "read_directions", "run_detection_data", "run_finetune", "steered_cache",
]


def __getattr__(name):
    """The torch parts, imported when first used (the design and texts stay torch-free at parse time)."""
    if name in ("answer_logits", "read_answers", "steered_cache"):
        from . import steer_remove

        return getattr(steer_remove, name)
    if name in ("read_directions", "run_detection_data", "run_finetune"):
        from . import jobs

        return getattr(jobs, name)
    raise AttributeError(name)
