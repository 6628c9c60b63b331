"""The experiment registry: one entry per concept-injection experiment, read by the config schema's
check, the rules, the job dispatcher, the statistics, the figures and the report.

Free of torch: the workflow reads it when it is parsed. Adding an experiment is one module with
its `run_<name>` function, one entry here, its resource files and their schema, and tests (README,
"Adding an experiment").
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Headline:
    """What the report and the figures show of an experiment's statistics table: the headline
    measure, the control measure it is read against (None: the rows of other kinds are the
    controls) and measures shown beside them."""

    measure: str
    control: str | None
    also: tuple[str, ...] = ()
    by_kind: bool = False  # rows are per question and kind (injected/random/control), not per measure


@dataclass(frozen=True)
class Experiment:
    """One experiment.

    `run_<name>` in llm_introspection.injection.<module> is called as
    run(model, tokenizer, cell, *resources, **settings, [params=sampling]): the loaded texts of
    the `resources` keys of config key injection.resources, in order, then the `settings` keys of
    the injection block. `statistics` names the function of injection.statistics that turns its
    records into tables: one table named after the experiment, or, with `tables`, a dict whose
    keys map to output names (injection_<output>.csv).
    """

    name: str
    module: str
    resources: tuple[str, ...]
    settings: tuple[str, ...]
    statistics: str
    headline: Headline
    statistics_seeded: bool = False  # the statistics function takes a bootstrap seed
    word_vectors: bool = True  # needs vectors named by concept word (not contrastive sentence pairs)
    strengths: bool = True  # False: nothing is injected; it runs at strength 0 only
    samples: bool = False  # samples answers: reads generation.temperature/top_p and max_new_tokens
    layers: str = "layer_fractions"  # the injection key that lists the layer fractions of its cells
    graded: bool = False  # its records are graded by the judge (rule grade_injection) before statistics
    tables: dict[str, str] = field(default_factory=dict)  # output name -> key of the statistics' dict
    figures: tuple[str, ...] = ()  # figures of its own, beside the sweep and the heatmaps

    @property
    def folder(self) -> str:
        """The results/injection/ folder the statistics read: the graded records when graded."""
        return "detection_graded" if self.graded else self.name

    @property
    def outputs(self) -> tuple[str, ...]:
        """The statistics tables it writes, as injection_<output>.csv."""
        return tuple(self.tables) or (self.name,)


EXPERIMENTS = {experiment.name: experiment for experiment in (
    Experiment(
        "detection_logits", "detection", ("detection",), ("n_variants", "min_option_mass", "seed", "batch_size"),
        "detection_logit_statistics",
        Headline("hit_rate", "false_alarm_rate",
                 also=("hit_minus_false_alarm", "hit_minus_false_alarm_crossed", "d_prime", "random_yes_rate",
                       "control_question_yes_bias")),
    ),
    Experiment(
        "detection_responses", "detection", ("detection",), ("samples", "seed", "batch_size"),
        "detection_response_statistics", Headline("detected_and_identified", "false_alarm_rate"),
        samples=True, graded=True,
    ),
    Experiment(
        "forced_identification", "detection", ("detection",), ("n_variants", "batch_size"),
        "forced_identification_statistics",
        Headline("top1_injected", "top1_control",
                 also=("top1_leak", "top1_injected_minus_leak", "top1_injected_minus_leak_crossed")),
        statistics_seeded=True,
    ),
    Experiment(
        "localization", "localization", ("localization", "neutral_sentences"),
        ("n_trials", "seed", "batch_size", "n_sentences"), "localization_statistics",
        Headline("accuracy", None, by_kind=True), word_vectors=False, layers="localization_layer_fractions",
        tables={"localization": "accuracy", "localization_margins": "margins", "localization_answers": "answers"},
        figures=("localization_answers",),
    ),
    Experiment(
        "thought_vs_text", "thought", ("thought_and_intent", "neutral_sentences"), ("n_trials", "seed", "batch_size"),
        "thought_vs_text_statistics", Headline("thought_top1_injected", "thought_top1_control"),
        statistics_seeded=True,
    ),
    Experiment(
        "prefill_intent", "thought", ("thought_and_intent", "neutral_sentences"), ("n_trials", "seed", "batch_size"),
        "prefill_intent_statistics", Headline("intent_injected", "intent_control"), statistics_seeded=True,
    ),
    Experiment(
        "intentional_control", "thought", ("thought_and_intent", "neutral_sentences"),
        ("n_trials", "seed", "batch_size"), "intentional_control_statistics",
        Headline("cosine_think", "cosine_dont_think"), statistics_seeded=True, strengths=False,
    ),
)}

# Each resource of config key injection.resources and its loader in injection.texts (each loader
# validates its file against its own schema).
RESOURCES = {
    "concepts": "load_concept_words",
    "contrastive_pairs": "load_contrastive_pairs",
    "neutral_sentences": "load_neutral_sentences",
    "detection": "load_detection_texts",
    "localization": "load_localization_texts",
    "thought_and_intent": "load_thought_texts",
    "grading_rubric": "load_grading_rubric",
}
# What every concept-vector file is made from, and what the grader reads.
VECTOR_RESOURCES = ("concepts", "contrastive_pairs", "neutral_sentences")
GRADING_RESOURCES = ("detection", "grading_rubric")
VECTOR_SETTINGS = ("vector_method", "n_concepts", "batch_size")
GRADING_SETTINGS = ("max_response_tokens", "batch_size")
# Figures of every sweep, beside those of the experiments.
SWEEP_FIGURES = ("injection_sweep", "injection_heatmaps")


def figures(experiments: list[str]) -> list[str]:
    """The injection figures of a config's experiments."""
    own = [name for e in experiments for name in EXPERIMENTS[e].figures]
    return [*SWEEP_FIGURES, *own]


def statistics_outputs(experiments: list[str]) -> list[str]:
    """The injection_<output>.csv tables of a config's experiments."""
    return [output for e in experiments for output in EXPERIMENTS[e].outputs]
