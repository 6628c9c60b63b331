"""Self-knowledge evaluations of any model of the config (issue 13, items 4-6), each compared with
the model's base: answer-probability shifts over question categories, Binder-style
self-prediction, self-calibration, length prediction, and the statistics of detecting steering.

Public, torch-free: `design` (EVALUATIONS, comparisons), `texts` (load_questions, load_tasks),
`scoring` (answer properties, verbal-report parsing, restricted_kl), `statistics`
(run_selfknowledge_statistics and the per-evaluation tables, detection_statistics), `profile`
(run_introspection_profile). With torch: `evaluate` (run_answer_shift, run_self_prediction,
run_calibration, run_length_prediction, greedy_answers) and `jobs` (run_selfknowledge).
Modules are imported where used, so the parse-time and analysis code never imports torch.
"""

__all__ = ["design", "evaluate", "jobs", "profile", "scoring", "statistics", "texts"]
