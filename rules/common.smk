import re
import sys
from pathlib import Path

# The library lives in workflow/llm_introspection; each script puts it on its path the same
# way, so it needs no install (e.g. with --sdm conda).
sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from llm_introspection.config import validate
from llm_introspection.errors import InputError
from llm_introspection.finetune.design import Variant, check_variant
from llm_introspection.finetune.texts import load_detection_texts
from llm_introspection.injection import texts as injection_texts
from llm_introspection.models_check import (
    adapter_path,
    check_lora_sources,
    check_models,
)
from llm_introspection.prompts import (
    load_prompt_set,
    select_prompt_ids,
    template_day,
    uses_chat_template,
)
from llm_introspection.records import base_instruct_pairs, condition
from llm_introspection.selfknowledge import design as selfknowledge_design
from llm_introspection.selfknowledge.texts import load_questions, load_tasks
from llm_introspection import placement, registry
from llm_introspection.study.coding import load_labelled_examples, load_lexicon
from llm_introspection.study.rubric import load_rubric

EXPERIMENTS = registry.EXPERIMENTS


def finetuned_pairs(config):
    """(model, variant) of every adapter the workflow trains: each model of finetune.models with
    each variant, and the (base, variant) each LoRA source with an adapter {variant: V} names.
    """
    models, finetune = config["models"], config["finetune"]
    for name in finetune["models"]:
        if name not in models or models[name]["source"]["kind"] == "lora":
            raise InputError(
                f"config key 'finetune.models': {name!r} is not one of the models that are not "
                f"LoRA sources ({', '.join(m for m in models if models[m]['source']['kind'] != 'lora')})"
            )
    pairs = [(m, v) for m in finetune["models"] for v in finetune["variants"]]
    for spec in models.values():
        source = spec["source"]
        if source["kind"] == "lora" and isinstance(source["adapter"], dict):
            pairs.append((source["base"], source["adapter"]["variant"]))
    return sorted(set(pairs))


# Everything a run reads is validated here, before any job: the config, the prompts, every
# configured resource file (each loader checks its file against its own schema) and the models'
# sources (there, and custom code only where trusted; no weights are loaded).
try:
    validate(config, "config", "the config")
    template_day(config["prompts"]["template_date"])  # a real day, not only its form
    check_models(config["models"])
    check_lora_sources(config["models"], config["finetune"]["variants"])
    PROMPTS = load_prompt_set(config["prompts"]["dir"])
    PROMPT_IDS = select_prompt_ids(config["prompts"], PROMPTS)
    load_lexicon(config["coding"]["lexicon"])
    load_labelled_examples(config["coding"]["labelled_examples"])
    load_rubric(config["judge"]["rubric"])
    if config["injection"]["models"]:
        for key, path in config["injection"]["resources"].items():
            getattr(injection_texts, registry.RESOURCES[key])(path)
    if config["selfknowledge"]["models"]:
        load_questions(config["selfknowledge"]["resources"]["questions"])
        load_tasks(config["selfknowledge"]["resources"]["tasks"])
    FINETUNED = finetuned_pairs(config)
    if FINETUNED:
        detection_texts = load_detection_texts(
            config["finetune"]["resources"]["detection"]
        )
        for name, entry in config["finetune"]["variants"].items():
            variant = Variant.from_config(name, entry)
            check_variant(variant, detection_texts.questions, detection_texts.answers)
            if variant.steering == "concepts":
                injection_texts.load_concept_words(
                    config["injection"]["resources"]["concepts"]
                )
except InputError as error:
    raise WorkflowError(str(error)) from None


LOG_TAIL_LINES = 12
INPUT_ERROR = "llm_introspection.errors.InputError: "


def failed_jobs():
    """This run's failed jobs; of a failed group job, the members whose outputs are missing."""
    for job in workflow.scheduler.failed:
        if not job.is_group():
            yield job
            continue
        for member in job.jobs:
            if not all(Path(path).exists() for path in member.output):
                yield member


def failure_reason(lines):
    """What a failed job's log says went wrong: the message of an InputError (it names the file,
    key or model), else the log's last lines (the traceback)."""
    starts = [i for i, line in enumerate(lines) if line.startswith(INPUT_ERROR)]
    if starts:
        return [lines[starts[-1]].removeprefix(INPUT_ERROR), *lines[starts[-1] + 1 :]]
    return lines[-LOG_TAIL_LINES:] or ["(the log is empty)"]


def print_failed_logs():
    """Print, for every failed job, the reason its log gives."""
    for job in failed_jobs():
        for path in map(Path, job.log):
            lines = (
                path.read_text(errors="replace").splitlines() if path.exists() else []
            )
            print(
                f"\nJob {job.rule.name} failed (log: {path}):",
                *(f"    {line}" for line in failure_reason(lines)),
                sep="\n",
                file=sys.stderr,
            )


def canonical(value):
    """A param in canonical form: mappings with their keys sorted, at every depth, so that the same
    config written in another key order plans no job."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    return value


def settings_of(section, keys):
    """The keys of one config section that a job reads, canonical."""
    return canonical({key: config[section][key] for key in keys})


MODELS = dict(config["models"])
SHARED_FRAME_SUFFIX = "-base-frame"


def shared_frame_twins(models):
    """The shared-frame condition's twins: name -> (original name, entry with frame 'base')."""
    twins = {}
    for name, spec in models.items():
        if (
            spec["variant"] == "instruct"
            and spec["frame"] == "native"
            and spec["source"]["kind"] != "lora"
        ):
            twin = name + SHARED_FRAME_SUFFIX
            if twin in models:
                raise WorkflowError(
                    f"config key 'conditions.shared_frame': the twin of model {name!r} would be "
                    f"named {twin!r}, which is already a model of the config"
                )
            twins[twin] = (name, {**spec, "frame": "base"})
    return twins


# Base/instruct pairs (same family and size, native frame): the identical-text condition traces each
# model on its partner's generations, and the base model once more with weight noise the size of
# the pair's difference (rules trace_cross, trace_noise).
# LoRA variants are no partners: a finetuned instruct model beside its base would make three models of
# one family and size.
PAIRS = base_instruct_pairs(
    {
        name: spec
        for name, spec in MODELS.items()
        if condition(spec) == "native" and spec["source"]["kind"] != "lora"
    }
)
PARTNER = {a: b for pair in PAIRS for a, b in (pair, pair[::-1])}
PAIR_BASES = [base for base, _ in PAIRS]


# Derived models: twin name -> the model whose prepared weights it shares.
TWIN_OF = {}
if config["conditions"]["shared_frame"]:
    for twin, (original, spec) in shared_frame_twins(MODELS).items():
        TWIN_OF[twin] = original
        MODELS[twin] = spec
if config["judge"]["model"] not in MODELS:
    raise WorkflowError(
        f"config key 'judge.model': {config['judge']['model']!r} is not one of the models "
        f"({', '.join(MODELS)}); the judge must be a model of the config"
    )
PER_PROMPT_JOBS = config["jobs"]["granularity"] == "prompt"
# A model job's threads, and its share of the one model_jobs slot of profiles/default: with
# runtime.exclusive false, model jobs take none and run side by side as --cores allows.
MODEL_THREADS = config["runtime"]["threads"]
MODEL_JOB_SLOT = 1 if config["runtime"]["exclusive"] else 0

INJECTION = config["injection"]
for name in INJECTION["models"]:
    if name not in MODELS:
        raise WorkflowError(
            f"config key 'injection.models': {name!r} is not one of the models ({', '.join(MODELS)})"
        )
WORD_EXPERIMENTS = [e for e in INJECTION["experiments"] if EXPERIMENTS[e].word_vectors]
if INJECTION["vector_method"] == "contrastive" and WORD_EXPERIMENTS:
    raise WorkflowError(
        "config key 'injection.vector_method': contrastive vectors are named by sentence pair, not by "
        f"concept word, so they serve localization only, not {sorted(WORD_EXPERIMENTS)}"
    )

# Self-knowledge evaluations: the listed models and the base of every listed LoRA model.
SELFKNOWLEDGE = config["selfknowledge"]
for name in SELFKNOWLEDGE["models"]:
    if name not in MODELS:
        raise WorkflowError(
            f"config key 'selfknowledge.models': {name!r} is not one of the models ({', '.join(MODELS)})"
        )
SELFKNOWLEDGE_MODELS = selfknowledge_design.evaluated_models(
    MODELS, SELFKNOWLEDGE["models"]
)
# Steering detection applies to the evaluated models with detection data (LoRA models of a trained
# variant and their bases); with none, the evaluation is left out.
SELFKNOWLEDGE_DETECTION = selfknowledge_design.detection_data(
    MODELS, SELFKNOWLEDGE_MODELS
)
SELFKNOWLEDGE_EVALUATIONS = [
    e
    for e in (SELFKNOWLEDGE["evaluations"] if SELFKNOWLEDGE_MODELS else [])
    if e != selfknowledge_design.DETECTION or SELFKNOWLEDGE_DETECTION
]


wildcard_constraints:
    model="|".join(re.escape(m) for m in MODELS),
    prompt="|".join(re.escape(p) for p in PROMPT_IDS),


def job_outputs(pattern):
    """Output paths of one model job: one per prompt, for the job's prompt or all prompts."""
    if PER_PROMPT_JOBS:
        return [pattern]
    return expand(pattern, prompt=PROMPT_IDS, allow_missing=True)


def job_file(prefix, suffix):
    """A log or benchmark path with exactly the wildcards of the job's outputs."""
    return (
        f"{prefix}/{{model}}/{{prompt}}{suffix}"
        if PER_PROMPT_JOBS
        else f"{prefix}/{{model}}{suffix}"
    )


def get_job_prompt_ids(wildcards):
    return [wildcards.prompt] if PER_PROMPT_JOBS else PROMPT_IDS


def get_job_prompt_files(wildcards):
    return [
        f"{config['prompts']['dir']}/{p}.yaml" for p in get_job_prompt_ids(wildcards)
    ]


def model_runtime(name):
    """runtime settings of one model's jobs: device, dtype (its own overrides runtime.dtype) and,
    only for a model on more than one GPU, gpus (so a one-GPU model's params stay as they were).
    The batch planning keys (memory budget, progress interval) change no output but its provenance
    record, so they are no param: the jobs read them from the config (llm_introspection.jobs.job_settings).
    """
    runtime = {key: config["runtime"][key] for key in ("device", "dtype")}
    runtime["dtype"] = MODELS[name].get("dtype", runtime["dtype"])
    gpus = model_gpus(name)
    if gpus > 1:
        runtime["gpus"] = gpus
    return canonical(runtime)


def template_date(name):
    """prompts.template_date for the jobs that render model `name`'s inputs through its chat
    template (an instruct model in its native frame), None for a model that reads a plain frame:
    changing the date reruns exactly the jobs whose rendered inputs can print it. It is a param of
    its own, not a runtime key, so that the jobs that only read token ids (trace, finetune) and
    prepare_model do not carry it. The judge renders through its tokenizer's chat template whatever
    its variant: rules judge and grade_injection take the date itself."""
    spec = MODELS[name]
    if uses_chat_template(spec["variant"], spec["frame"]):
        return config["prompts"]["template_date"]
    return None


def get_template_date(wildcards):
    return template_date(wildcards.model)


def get_vector_template_date(wildcards):
    """concept_vectors renders requests for mean-subtraction vectors only (contrastive pairs are
    read as plain text)."""
    if INJECTION["vector_method"] != "mean_subtraction":
        return None
    return template_date(wildcards.model)


def model_gpus(name, copies=1):
    """GPUs a job of model `name` asks for (its `gpus`, or what its size needs with `gpus: auto`)
    when it holds `copies` models of that size."""
    try:
        return placement.model_gpus(name, MODELS[name], config["runtime"], copies)
    except InputError as error:
        raise WorkflowError(str(error)) from None


def get_model_gpus(wildcards):
    """The gpu resource of a model job: the SLURM executor asks for that many (--gpus)."""
    return model_gpus(wildcards.model)


def get_pair_gpus(wildcards):
    """trace_noise holds a base model and its instruct partner at once."""
    return model_gpus(wildcards.model, copies=2)


def get_pair_runtime(wildcards):
    """trace_noise's runtime: both models of the pair spread over the GPUs the job asks for."""
    runtime = model_runtime(wildcards.model)
    gpus = model_gpus(wildcards.model, copies=2)
    return canonical(runtime | {"gpus": gpus}) if gpus > 1 else runtime


def get_judge_gpus(wildcards):
    return model_gpus(config["judge"]["model"])


def get_runtime(wildcards):
    return model_runtime(wildcards.model)


def get_judge_manifest(wildcards):
    return f"results/models/{config['judge']['model']}/manifest.json"


def get_judge_runtime(wildcards):
    return model_runtime(config["judge"]["model"])


def get_model_spec(wildcards):
    """A model's entry as prepare_model reads it (its GPU count is no part of the weights)."""
    return canonical({k: v for k, v in MODELS[wildcards.model].items() if k != "gpus"})


def get_twin_source_manifest(wildcards):
    """A twin's original's manifest (its weights are shared), else nothing."""
    original = TWIN_OF.get(wildcards.model)
    return [f"results/models/{original}/manifest.json"] if original else []


def get_lora_inputs(wildcards):
    """A LoRA source's base manifest and adapter files (a shared-frame twin: none, it copies its
    original's manifest)."""
    source = MODELS[wildcards.model]["source"]
    if source["kind"] != "lora" or wildcards.model in TWIN_OF:
        return {}
    adapter = adapter_path(source)
    return {
        "base": f"results/models/{source['base']}/manifest.json",
        "adapter_config": f"{adapter}/adapter_config.json",
        "adapter_weights": f"{adapter}/adapter_model.safetensors",
    }


FINETUNE = config["finetune"]
FINETUNE_BASES = sorted({m for m, _ in FINETUNED})
FINETUNE_VARIANTS = sorted({v for _, v in FINETUNED})
# The keys each finetuning job reads.
DETECTION_DATA_SETTINGS = (
    "n_examples",
    "n_directions",
    "direction_seeds",
    "magnitudes",
    "layer_ranges",
    "single_layer",
    "label_tolerance",
    "seed",
    "batch_size",
)
FINETUNE_SETTINGS = ("epochs", "batch_size", "learning_rate", "lora", "keep", "seed")


def get_detection_inputs(wildcards):
    """The base model's manifest, the detection texts and, for a concept variant, the concept file."""
    inputs = {
        "manifest": f"results/models/{wildcards.model}/manifest.json",
        "texts": FINETUNE["resources"]["detection"],
    }
    if FINETUNE["variants"][wildcards.variant]["steering"] == "concepts":
        inputs["concepts"] = INJECTION["resources"]["concepts"]
    return inputs


def get_variant_entry(wildcards):
    return canonical(FINETUNE["variants"][wildcards.variant])


def finetune_outputs():
    """The provenance file of every adapter the workflow trains."""
    return [
        f"results/finetune/{model}/{variant}/training.json"
        for model, variant in FINETUNED
    ]


def names_pattern(names):
    """A wildcard constraint matching exactly the given names (nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def get_partner_generations(wildcards):
    """The pair partner's generation files of one job's prompts."""
    return [
        f"results/generations/{PARTNER[wildcards.model]}/{p}.json"
        for p in get_job_prompt_ids(wildcards)
    ]


def get_partner_manifest(wildcards):
    return f"results/models/{PARTNER[wildcards.model]}/manifest.json"


def get_model_generations(wildcards):
    """Every generation file of one model."""
    return expand(
        "results/generations/{model}/{prompt}.json",
        model=wildcards.model,
        prompt=PROMPT_IDS,
    )


def number(value):
    """A layer fraction or strength as it appears in paths: 0.5, 2, 0.25."""
    return f"{value:g}"


def injection_layers(experiment):
    """The layer fractions of an experiment's cells, from its own key of the injection block."""
    return [number(f) for f in INJECTION[EXPERIMENTS[experiment].layers]]


def injection_strengths(experiment):
    """The strengths of an experiment's cells: strength 0 only for one that injects nothing."""
    if not EXPERIMENTS[experiment].strengths:
        return ["0"]
    return [number(s) for s in INJECTION["strengths"]]


def injection_cell_grid(experiment):
    """The (layer, strength) cells of an experiment's sweep, layer-major, as they appear in paths."""
    return [
        (layer, strength)
        for layer in injection_layers(experiment)
        for strength in injection_strengths(experiment)
    ]


def injection_cell_files(folder, experiment, model="{model}"):
    """The record files of an experiment's cells for one model (a {model} pattern by default), in
    injection_cell_grid order, under results/injection/<folder>/."""
    return [
        f"results/injection/{folder}/{model}/layer{layer}_strength{strength}.json"
        for layer, strength in injection_cell_grid(experiment)
    ]


def injection_cells(experiment):
    """Every (model, layer, strength) record file the statistics read for one experiment."""
    return [
        path
        for model in INJECTION["models"]
        for path in injection_cell_files(
            EXPERIMENTS[experiment].folder, experiment, model
        )
    ]


def vector_layers():
    """Every layer fraction some configured experiment injects at: one vector file each."""
    fractions = {
        float(layer) for e in INJECTION["experiments"] for layer in injection_layers(e)
    }
    return [number(f) for f in sorted(fractions)]


def vector_files(layers):
    return [f"results/injection/vectors/{{model}}/layer{layer}.h5" for layer in layers]


def inject_cells(experiment):
    """Per cell of the experiment (injection_cell_grid order): the index of its layer's vector
    file among injection_layers(experiment), and its strength."""
    layers = injection_layers(experiment)
    return [
        [layers.index(layer), float(strength)]
        for layer, strength in injection_cell_grid(experiment)
    ]


def injection_statistics_outputs():
    return {
        t: f"results/statistics/injection_{t}.csv"
        for t in registry.statistics_outputs(INJECTION["experiments"])
    }


def injection_resources(keys):
    """The configured injection resource files of the given keys, by key (canonical)."""
    return canonical({key: INJECTION["resources"][key] for key in keys})


def inject_settings(experiment):
    """The injection keys one experiment reads; for one that samples, also its sampling keys."""
    spec = EXPERIMENTS[experiment]
    settings = {key: INJECTION[key] for key in spec.settings}
    if spec.samples:
        settings["max_new_tokens"] = INJECTION["max_new_tokens"]
        settings |= {k: config["generation"][k] for k in ("temperature", "top_p")}
    return canonical(settings)


FIGURES = (
    "keyword_scores",
    "judge_scores",
    "agreement",
    "first_token_entropy",
    "entropy_profiles",
    "probe_accuracy",
    "activation_embeddings",
)
INJECTION_FIGURES = (
    registry.figures(INJECTION["experiments"]) if INJECTION["models"] else []
)


def get_injection_report_inputs(wildcards):
    """The injection statistics and figures, when the config runs injection."""
    if not INJECTION["models"]:
        return {}
    return {
        "injection": "results/statistics/injection_statistics.json",
        "injection_figures": expand(
            "results/figures/{name}.png", name=INJECTION_FIGURES
        ),
    }


def selfknowledge_files(evaluation):
    """The per-model record files of one self-knowledge evaluation (detection: of the models with
    detection data)."""
    detection = evaluation == selfknowledge_design.DETECTION
    return expand(
        "results/selfknowledge/{evaluation}/{model}.json",
        evaluation=evaluation,
        model=list(SELFKNOWLEDGE_DETECTION) if detection else SELFKNOWLEDGE_MODELS,
    )


def selfknowledge_statistics_outputs():
    return {
        e: f"results/statistics/selfknowledge_{e}.csv"
        for e in SELFKNOWLEDGE_EVALUATIONS
    }


SELFKNOWLEDGE_FIGURES = (
    [
        name
        for name, evaluation in (
            ("selfknowledge_shifts", "answer_shift"),
            ("selfknowledge_calibration", "calibration"),
            ("selfknowledge_detection", "detection"),
        )
        if evaluation in SELFKNOWLEDGE_EVALUATIONS
    ]
    if SELFKNOWLEDGE_MODELS
    else []
)


def get_selfknowledge_resources(wildcards):
    """The one resource file an evaluation reads, by its key; for detection, per variant whose data
    the model is read on, the split files and the directions file of rule detection_data.
    """
    key = selfknowledge_design.EVALUATIONS[wildcards.evaluation].resource
    if key != selfknowledge_design.DETECTION_DATA:
        return {key: SELFKNOWLEDGE["resources"][key]}
    if wildcards.model not in SELFKNOWLEDGE_DETECTION:
        raise WorkflowError(
            f"model {wildcards.model} has no detection data: detection is evaluated on the LoRA models of "
            "selfknowledge.models whose adapter is {variant: V} and on their bases"
        )
    return {
        variant: {
            **{
                split: f"results/finetune/{data_model}/{variant}/data/{split}.json"
                for split in selfknowledge_design.DETECTION_SPLITS
            },
            "directions": f"results/finetune/{data_model}/{variant}/data/directions.h5",
        }
        for data_model, variant in SELFKNOWLEDGE_DETECTION[wildcards.model]
    }


def get_selfknowledge_inputs(wildcards):
    """The files of get_selfknowledge_resources as the rule's named inputs."""
    resources = get_selfknowledge_resources(wildcards)
    if wildcards.evaluation != selfknowledge_design.DETECTION:
        return resources
    return {
        re.sub(r"\W", "_", f"{variant}_{key}"): path
        for variant, paths in resources.items()
        for key, path in paths.items()
    }


def get_selfknowledge_settings(wildcards):
    """The selfknowledge keys one evaluation's job reads."""
    keys = selfknowledge_design.EVALUATIONS[wildcards.evaluation].settings
    return canonical({key: SELFKNOWLEDGE[key] for key in keys})


def get_selfknowledge_models(wildcards):
    """The entries of the evaluated models (the statistics read their variant and source)."""
    return canonical({name: MODELS[name] for name in SELFKNOWLEDGE_MODELS})


def get_selfknowledge_outputs(wildcards):
    """The self-knowledge tables and figures, when the config runs the evaluations."""
    if not SELFKNOWLEDGE_MODELS:
        return {}
    return {
        "selfknowledge": "results/statistics/selfknowledge_statistics.json",
        **{
            f"selfknowledge_{e}": path
            for e, path in selfknowledge_statistics_outputs().items()
        },
        "selfknowledge_figures": expand(
            "results/figures/{name}.png", name=SELFKNOWLEDGE_FIGURES
        ),
    }


def get_profile_inputs(wildcards):
    """What the introspection profile joins: the core study's tables, and the injection and
    self-knowledge tables when the config runs them."""
    inputs = {
        "coding": expand("results/coding/keyword/{model}.csv", model=MODELS),
        "scaling": "results/statistics/scaling_statistics.json",
        "entropy": "results/statistics/entropy_statistics_enhanced.csv",
        "probing": "results/probing/probes.csv",
    }
    if INJECTION["models"]:
        inputs |= {
            f"injection_{t}": path for t, path in injection_statistics_outputs().items()
        }
    inputs |= {
        f"selfknowledge_{e}": path
        for e, path in selfknowledge_statistics_outputs().items()
    }
    return inputs


def get_study_outputs():
    patterns = [
        "results/generations/{model}/{prompt}.json",
        "results/entropy/{model}/{prompt}.h5",
        "results/activations/{model}/{prompt}.h5",
    ]
    per_prompt = [
        path
        for pattern in patterns
        for path in expand(pattern, model=MODELS, prompt=PROMPT_IDS)
    ]
    return (
        per_prompt
        + [
            "results/statistics/content_statistics.csv",
            "results/statistics/mixed_effects.json",
            "results/statistics/scaling_statistics.json",
            "results/statistics/entropy_statistics_enhanced.csv",
            "results/statistics/entropy_profiles.csv",
            "results/statistics/agreement_statistics.json",
            "results/statistics/probing_statistics.json",
            "results/statistics/introspection_profile.csv",
            "results/report.md",
        ]
        + (
            ["results/statistics/injection_statistics.json"]
            if INJECTION["models"]
            else []
        )
        + (
            ["results/statistics/selfknowledge_statistics.json"]
            if SELFKNOWLEDGE_MODELS
            else []
        )
        + finetune_outputs()
    )
