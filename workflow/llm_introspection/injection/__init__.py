"""Concept injection (Lindsey 2025) and localization (Godet): concept vectors (concepts), the
experiments' texts (texts), a sweep's cells (cell), trial inputs (inputs), one module per family of
experiments (detection, localization, thought), grading, statistics, the cell fingerprints of a sweep job (sweep) and the rules' jobs (jobs).
What each experiment is lives in llm_introspection.registry.

The public functions and classes of every module are listed below and can be read from the
package (`from llm_introspection.injection import wilson_interval`); each module is imported only
when one of its names is first read, so the torch-free modules (texts, statistics) stay torch-free.
Constants (CRITERIA, MEASURE_COLUMNS, ...) are read from their modules.
"""

from ..lazy import lazy_exports

_PUBLIC = {
    "cell": ("concept_word", "Cell", "open_cell", "write_records"),
    "concepts": ("concept_prompt_ids", "sentence_ids", "last_token_activations", "mean_token_activations",
                 "mean_residual_norms", "mean_residual_norm", "mean_subtraction_vectors", "contrastive_vectors", "matched_random_vectors",
                 "concept_like_random_vectors", "VectorSet", "save_vectors", "load_vectors"),
    "detection": ("variants", "run_detection_logits", "run_detection_responses", "run_forced_identification",
                  "ranking"),
    "grading": ("grade_responses",),
    "inputs": ("answer_start", "option_frame", "conversation_ids", "detection_prompt", "leak_prompt",
               "localization_prompt"),
    "jobs": ("load_resource", "run_concept_vectors", "run_inject", "run_grade_injection"),
    "localization": ("run_localization",),
    "statistics": ("wilson_interval", "newcombe_difference", "d_prime", "binomial_p", "rate_row", "difference_row",
                   "crossed_difference_row", "d_prime_row", "mean_row", "detection_logit_statistics",
                   "detection_response_statistics", "forced_identification_statistics", "thought_vs_text_statistics",
                   "prefill_intent_statistics",
                   "intentional_control_statistics", "localization_statistics", "json_ready", "read_records",
                   "experiment_tables", "run_injection_statistics"),
    "sweep": ("source_digest", "file_digest", "fingerprint", "finished_path", "is_current", "keep_finished",
              "release_finished"),
    "texts": ("ConceptWords", "ContrastivePair", "AnswerSpec", "DetectionTexts", "Question", "LocalizationTexts",
              "GradingRubric", "ThoughtTexts", "load_concept_words", "load_contrastive_pairs",
              "load_neutral_sentences", "provenance", "load_detection_texts", "load_localization_texts",
              "load_thought_texts", "load_grading_rubric"),
    "thought": ("run_thought_vs_text", "run_prefill_intent", "run_intentional_control"),
}

__all__, __getattr__, __dir__ = lazy_exports(globals(), _PUBLIC)
