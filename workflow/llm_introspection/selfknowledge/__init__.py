"""Self-knowledge evaluations of any model of the config (issue 13, items 4-6), each compared with
the model's base: answer-probability shifts over question categories, Binder-style
self-prediction, self-calibration, length prediction, and steer-then-remove detection on the
finetuning rules' detection data (LoRA models of a trained variant and their bases).

Torch-free: `design` (EVALUATIONS, comparisons, detection_data), `texts` (load_questions, load_tasks),
`scoring` (answer properties, verbal-report parsing, restricted_kl), `statistics`
(run_selfknowledge_statistics and the per-evaluation tables, detection_statistics), `profile`
(run_introspection_profile). With torch: `evaluate` (run_answer_shift, run_self_prediction,
run_calibration, run_length_prediction, run_detection, greedy_answers) and `jobs` (run_selfknowledge).

The public functions and classes of every module are listed below and can be read from the
package (`from llm_introspection.selfknowledge import comparisons`); each module is imported only
when one of its names is first read, so the parse-time and analysis code never imports torch.
Constants (EVALUATIONS, ...) are read from their modules.
"""

from ..lazy import lazy_exports

_PUBLIC = {
    "design": ("Evaluation", "comparisons", "evaluated_models", "detection_data"),
    "evaluate": ("is_chat", "prompt_ids", "greedy_answers", "run_answer_shift", "run_self_prediction", "answer_token",
                 "run_calibration", "run_length_prediction", "run_detection"),
    "jobs": ("DetectionData", "load_detection_data", "run_selfknowledge"),
    "profile": ("core_measures", "profile_table", "rho_rows", "exact_p", "spearman_row", "correlations",
                "run_introspection_profile"),
    "scoring": ("words", "answer_property", "predicted_property", "parse_number", "parse_report",
                "report_distribution", "restricted_kl"),
    "statistics": ("mean_ci", "one_sample_p", "group_difference", "answer_shift_rows", "self_prediction_rows",
                   "calibration_rows", "length_prediction_rows", "detection_statistics", "detection_rows", "evaluation_table",
                   "read_records", "run_selfknowledge_statistics"),
    "texts": ("Question", "Questions", "Item", "Tasks", "load_questions", "load_tasks", "hypothetical"),
}

__all__, __getattr__, __dir__ = lazy_exports(globals(), _PUBLIC)
