"""The study's figures (figures), the markdown report (markdown) and its self-knowledge sections
(selfknowledge).

Their public functions are listed below and can be read from the package (`from
llm_introspection.report import run_report`); each module is imported only when one of its names is
first read.
"""

from ..lazy import lazy_exports

_PUBLIC = {
    "figures": ("score_bars", "entropy_profiles", "first_token_entropy", "probe_accuracy", "activation_embeddings",
                "agreement_matrix", "injection_sweep", "injection_heatmaps", "localization_answers",
                "run_injection_figures", "run_figures", "selfknowledge_shifts", "selfknowledge_calibration", "selfknowledge_detection",
                "run_selfknowledge_figures"),
    "markdown": ("markdown_table", "interval_table", "caveats", "run_report"),
    "selfknowledge": ("headline_table", "variant_table", "selfknowledge_section", "profile_section"),
}

__all__, __getattr__, __dir__ = lazy_exports(globals(), _PUBLIC)
