"""The base-vs-instruct study: keyword coding (coding), the LLM judge (rubric, judge), probes and
embeddings (probing, tasks, layers, identity, probe_summary), statistics (statistics, clustered,
synthetic tables for their tests) and the analysis rules' jobs (analysis).

The public functions and classes of every module are listed below and can be read from the
package (`from llm_introspection.study import holm`); each module is imported only when one of its
names is first read, so `import llm_introspection.study.statistics` stays free of torch (only judge
imports it). Constants (DIMENSIONS, COMPARISON_COLUMNS, ...) are read from their modules.
"""

from ..lazy import lazy_exports

_PUBLIC = {
    "analysis": ("run_code_keywords", "comparisons_by_condition", "run_content_statistics", "entropy_tables",
                 "describe_by_model", "run_entropy_statistics", "run_agreement_statistics", "content_labels",
                 "run_probes", "mid_layer_index", "run_embeddings"),
    "clustered": ("cell_sums", "two_way_bootstrap", "expanded_confidence", "crossed_t_test", "clustered_statistics",
                  "crossed_mixed_effects"),
    "coding": ("Thresholds", "Lexicon", "load_lexicon", "normalise", "sentence_starts", "level", "explain",
               "code_text", "code_table", "load_labelled_examples", "labelled_agreement"),
    "identity": ("pair_subsets", "identity_probes", "direction_content", "pair_analysis"),
    "judge": ("render_user_message", "build_judge_prompt", "score_completions"),
    "layers": ("group_halves", "held_out_layer", "sweep_holm"),
    "probe_summary": ("records", "calibration_margin", "identity_summary", "self_reference_summary",
                      "probing_summary"),
    "probing": ("file_models", "activation_layouts", "pooled_activations", "completion_tokens", "make_probe",
                "grouped_splits", "shuffled_labels", "make_text_probe", "probe", "embed"),
    "rubric": ("Dimension", "RubricText", "rubric_text_fields", "Rubric", "load_rubric"),
    "statistics": ("mean_difference", "ratio_of_means", "standardized_difference", "mean_ratio", "cohens_d",
                   "percentile_interval", "bootstrap_ci", "bootstrap_two_sample_ci", "compare_groups", "holm",
                   "families_with_both_variants", "content_statistics", "fit_coefficients", "converged_fit",
                   "mixed_effects", "agreement", "spearman_exact", "scaling"),
    "synthetic": ("study_table", "population_means"),
    "tasks": ("probe_all_layers", "not_estimable", "run_subsets", "probe_tasks"),
}

__all__, __getattr__, __dir__ = lazy_exports(globals(), _PUBLIC)
