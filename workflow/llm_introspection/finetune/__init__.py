"""Introspection finetuning: steer-then-remove detection data and LoRA adapters trained on it.

The design (design: Variant, check_balance, layer_ranges), the texts (texts), the detection data
(data), the read-out from a steered key/value cache (steer_remove: steered_cache, answer_logits,
read_answers), LoRA training (training) and the jobs (jobs: read_directions, run_detection_data,
run_finetune). The evaluations of finetuned variants read a variant's held-out examples with
`read_json` and `read_directions` and score them with `read_answers`.

The public functions and classes of every module are listed below and can be read from the
package (`from llm_introspection.finetune import Variant`); each module is imported only when one
of its names is first read, so the design and the texts stay torch-free at parse time. Constants
(SPLITS, DIRECTION_POOL, ...) are read from their modules.
"""

from ..lazy import lazy_exports

_PUBLIC = {
    "data": ("options_frame", "example_ids", "random_directions", "concept_directions", "mean_residual_norms",
             "build_splits"),
    "design": ("Variant", "steered_option", "check_variant", "layer_ranges", "plan_split", "assign_labels", "check_balance"),
    "jobs": ("read_directions", "run_detection_data", "save_adapter", "run_finetune"),
    "steer_remove": ("steered_cache", "answer_logits", "read_answers"),
    "texts": ("Context", "DetectionTexts", "load_detection_texts"),
    "training": ("add_lora", "evaluate", "train_lora"),
}

__all__, __getattr__, __dir__ = lazy_exports(globals(), _PUBLIC)
