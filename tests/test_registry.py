"""The experiment registry is the one description of each injection experiment: everything it names
exists, and the config schema offers exactly its experiments and resources."""

import inspect
from importlib import import_module

import pytest

from conftest import CONFIG_SCHEMA
from llm_introspection import registry
from llm_introspection.config import read_yaml, schema_path
from llm_introspection.injection import statistics, texts

INJECTION_SCHEMA = read_yaml(CONFIG_SCHEMA)["properties"]["injection"]["properties"]


def test_the_schema_offers_the_registered_experiments_and_resources():
    assert INJECTION_SCHEMA["experiments"]["items"]["enum"] == list(registry.EXPERIMENTS)
    assert list(INJECTION_SCHEMA["resources"]["properties"]) == list(registry.RESOURCES)
    assert set(INJECTION_SCHEMA["experiments"]["default"]) <= set(registry.EXPERIMENTS)


@pytest.mark.parametrize("name", list(registry.EXPERIMENTS))
def test_each_experiment_names_a_runner_its_resources_settings_and_statistics(name):
    spec = registry.EXPERIMENTS[name]
    run = getattr(import_module(f"llm_introspection.injection.{spec.module}"), f"run_{name}")
    parameters = inspect.signature(run).parameters
    assert list(parameters)[:3] == ["model", "tokenizer", "cell"]
    assert len(parameters) >= 3 + len(spec.resources)
    assert set(spec.settings) | ({"params"} if spec.samples else set()) <= set(parameters)
    assert set(spec.resources) <= set(registry.RESOURCES)
    assert set(spec.settings) <= set(INJECTION_SCHEMA)
    assert INJECTION_SCHEMA[spec.layers]["items"] == {"type": "number", "minimum": 0, "maximum": 1}
    assert callable(getattr(statistics, spec.statistics))
    assert ("seed" in inspect.signature(getattr(statistics, spec.statistics)).parameters) == spec.statistics_seeded


@pytest.mark.parametrize("key", list(registry.RESOURCES))
def test_each_resource_loads_its_default_file_against_its_own_schema(key):
    loader = getattr(texts, registry.RESOURCES[key])
    assert loader(INJECTION_SCHEMA["resources"]["properties"][key]["default"])


def test_every_schema_the_library_names_exists():
    names = {"config", "prompt", "lexicon", "labelled_examples", "rubric", "concepts", "concepts_contrastive_pairs",
             "concepts_neutral_sentences", "injection_detection", "injection_localization",
             "injection_thought_and_intent", "injection_grading_rubric", "finetune_detection",
             "selfknowledge_questions", "selfknowledge_tasks"}
    assert all(schema_path(name).is_file() for name in names)
    assert {p.name.removesuffix(".schema.yaml") for p in schema_path("config").parent.glob("*.schema.yaml")} == names
