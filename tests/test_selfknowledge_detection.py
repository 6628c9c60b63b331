"""The detection evaluation of the self-knowledge study: a model read on the finetuning rules'
detection data (steer-then-remove), said_yes mapped per variant (flipped labels, a neutral pair),
the job's records and provenance, and which models get detection data."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, TINY_LLAMA, tiny_spec
from llm_introspection.finetune.design import Variant, steered_option
from llm_introspection.prompts import TEMPLATE_DATE
from llm_introspection.selfknowledge import evaluate
from llm_introspection.selfknowledge.design import detection_data, evaluated_models
from llm_introspection.selfknowledge.statistics import detection_rows, evaluation_table

VARIANTS = {"original": {}, "flipped_labels": {"labels": "flipped"},
            "neutral_red_blue": {"question": "choose", "answers": "red_blue"}}
SETTINGS = {"n_examples": {"train": 2, "validation": 12, "heldout": 12}, "n_directions": {"train": 3, "heldout": 3},
            "direction_seeds": {"train": 1, "heldout": 2}, "magnitudes": [2.0, 8.0],
            "layer_ranges": {"early": [0.0, 0.5], "late": [0.5, 1.0]}, "single_layer": 0.5,
            "label_tolerance": 0.02, "seed": 0, "batch_size": 8}
RUNTIME = {"device": "cpu", "dtype": "float32"}


def test_steered_option_is_b_only_for_flipped_labels():
    assert steered_option(Variant("original")) == 0
    assert steered_option(Variant("flipped_labels", labels="flipped")) == 1
    assert steered_option(Variant("neutral", question="choose", answers="red_blue")) == 0
    assert steered_option(Variant("deny", labels="deny")) == 0


@pytest.fixture(scope="module")
def detection_files(tokenizer_dir, tmp_path_factory):
    """A tiny instruct model's manifest and its detection data of the three default variants
    (rule detection_data's job, validation and held-out splits of 12 examples)."""
    from llm_introspection.finetune.jobs import run_detection_data
    from llm_introspection.models import prepare_model

    directory = tmp_path_factory.mktemp("detection")
    manifest = prepare_model("tiny-instruct", tiny_spec(tokenizer_dir, TINY_LLAMA, variant="instruct"), directory / "m")
    (directory / "manifest.json").write_text(json.dumps(manifest))
    resources = {}
    for name, entry in VARIANTS.items():
        paths = {key: directory / name / f"{key}.{'h5' if key == 'directions' else 'json'}"
                 for key in ("train", "validation", "heldout", "directions")}
        run_detection_data(directory / "manifest.json", REPO / "resources/finetune/detection.yaml",
                           REPO / "resources/concepts/concepts.yaml", name, entry, SETTINGS, RUNTIME, 1,
                           {key: str(path) for key, path in paths.items()}, template_date=TEMPLATE_DATE)
        resources[name] = {key: str(paths[key]) for key in ("validation", "heldout", "directions")}
    return directory / "manifest.json", resources


def test_the_job_reads_each_variants_trials_with_the_steered_answer_of_that_variant(detection_files, tmp_path):
    from llm_introspection.selfknowledge.jobs import run_selfknowledge

    manifest, resources = detection_files
    out = tmp_path / "detection.json"
    run_selfknowledge(manifest, "detection", out, {"batch_size": 8}, resources, RUNTIME, 1, template_date=TEMPLATE_DATE)
    data = json.loads(out.read_text())
    records = pd.DataFrame(data["records"])
    assert data["evaluation"] == "detection" and data["model"]["name"] == "tiny-instruct"
    assert len(records) == 3 * 24 and set(records["pair"]) == set(VARIANTS)
    provenance = data["texts"]["variants"]
    assert {p["steered_answer"]["heldout"] for p in provenance.values()} == {"yes", "no", "Red"}
    assert provenance["flipped_labels"]["steered_answer"]["heldout"] == "no"
    assert all(len(f["sha256"]) == 64 for p in provenance.values() for f in p["files"].values())
    # said_yes by hand: chose the variant's steered answer, by the larger option log-probability
    chose_a = records["log_p_a"] >= records["log_p_b"]
    expected = {"original": chose_a, "flipped_labels": ~chose_a, "neutral_red_blue": chose_a}
    for pair, rows in records.groupby("pair"):
        assert (rows["said_yes"] == expected[pair][rows.index]).all(), pair
        assert (rows["chose"] == np.where(chose_a[rows.index], rows["option_a"], rows["option_b"])).all()
        assert (rows["matches_label"] == (np.where(chose_a[rows.index], 0, 1) == rows["label"])).all()
    assert set(records.loc[records["pair"] == "neutral_red_blue", "steered_answer"]) == {"Red"}
    # the held-out reads are the unfinetuned model's answers the data stored (the same model here)
    for pair in VARIANTS:
        stored = json.loads(open(resources[pair]["heldout"]).read())["examples"]
        rows = records[(records["pair"] == pair) & (records["split"] == "heldout")].sort_values("index")
        assert np.allclose(rows[["log_p_a", "log_p_b"]].to_numpy(), [e["base_log_probs"] for e in stored], atol=1e-5)
        # the flipped labels are the other option: a model choosing its labels says "yes" when unsteered
        if pair == "flipped_labels":
            assert all(e["label"] == (1 if e["steered"] else 0) for e in stored)


def test_a_planted_detector_scores_by_each_variants_mapping(detection_files, monkeypatch):
    """A stand-in model that puts its mass on option A exactly on steered trials: a perfect detector
    under the original and the neutral pair (A = yes, Red), perfectly wrong under flipped labels
    (there, "steered" is B); one that follows the flipped labels (B when steered) is perfect there."""
    from llm_introspection.selfknowledge.jobs import load_detection_data

    data = load_detection_data(detection_files[1]).sets

    def planted(a_when_steered):
        def read(model, examples, question_ids, directions, option_ids, batch_size):
            a = np.array([e["steered"] == a_when_steered for e in examples])
            return np.log(np.where(a[:, None], [0.9, 0.05], [0.05, 0.9]))
        return read

    record = {"name": "stand-in", "variant": "instruct", "frame": "native"}
    monkeypatch.setattr(evaluate, "read_answers", planted(True))
    records = pd.DataFrame(evaluate.run_detection(None, _Tokenizer(data), record, data, 8))
    accuracy = (records["said_yes"] == records["steered"]).groupby(records["pair"]).mean()
    assert accuracy.to_dict() == {"flipped_labels": 0.0, "neutral_red_blue": 1.0, "original": 1.0}
    monkeypatch.setattr(evaluate, "read_answers", planted(False))
    records = pd.DataFrame(evaluate.run_detection(None, _Tokenizer(data), record, data, 8))
    accuracy = (records["said_yes"] == records["steered"]).groupby(records["pair"]).mean()
    assert accuracy.to_dict() == {"flipped_labels": 1.0, "neutral_red_blue": 0.0, "original": 0.0}
    # and matches_label follows the training labels: every trial of flipped labels matches them
    assert records.loc[records["pair"] == "flipped_labels", "matches_label"].all()
    # the statistics: per variant (pair) on the held-out and validation splits, chance 0.5
    table = pd.DataFrame(detection_rows(records.assign(model="m"), None, 0, 200))
    held = table[(table["measure"] == "accuracy") & (table["subset"] == "heldout")].set_index("pair")
    assert held.loc["flipped_labels", "estimate"] == 1.0 and held.loc["flipped_labels", "p_value"] < 0.001


class _Tokenizer:
    """Reads the data's option ids as the tokens the data recorded (what a matching tokenizer does)."""

    def __init__(self, data):
        self.tokens = {i: t for entry in data for c in entry["splits"].values()
                       for i, t in zip(c["option_ids"], c["option_tokens"])}

    def convert_ids_to_tokens(self, ids):
        return [self.tokens[i] for i in ids]


def test_each_variant_is_compared_with_its_base_on_the_same_trials(tmp_path):
    models = {"b": {"source": {"kind": "tiny_random"}, "variant": "instruct", "family": "f", "size_b": 1},
              **{f"b-{v}": {"source": {"kind": "lora", "base": "b", "adapter": {"variant": v}}, "variant": "instruct",
                            "family": "f", "size_b": 1} for v in ("original", "flipped")},
              "b-dir": {"source": {"kind": "lora", "base": "b", "adapter": "some/dir"}, "variant": "instruct",
                        "family": "f", "size_b": 1},
              "other": {"source": {"kind": "tiny_random"}, "variant": "base", "family": "g", "size_b": 1}}
    evaluated = evaluated_models(models, ["b-original", "b-flipped", "b-dir", "other"])
    assert detection_data(models, evaluated) == {"b-original": [("b", "original")], "b-flipped": [("b", "flipped")],
                                                 "b": [("b", "original"), ("b", "flipped")]}
    assert detection_data(models, ["other"]) == {}
    # statistics: the base's trials on the original data pair with b-original's, trial by trial
    rng = np.random.default_rng(0)
    rows = []
    for model, pairs in (("b", ("original", "flipped")), ("b-original", ("original",)), ("b-flipped", ("flipped",))):
        for pair in pairs:
            for index in range(40):
                steered = index % 2 == 0
                detects = model == "b-original"
                rows.append({"model": model, "pair": pair, "split": "heldout", "index": index, "steered": steered,
                             "magnitude": 1.0 if steered else 0.0, "layer_range": "all" if steered else None,
                             "said_yes": steered if detects else bool(rng.random() < 0.5), "item": f"{pair}/{index}"})
    table = evaluation_table("detection", pd.DataFrame(rows), models, 0, 200)
    gain = table[(table["measure"] == "accuracy_difference") & (table["comparison"] == "lora_vs_base")]
    assert set(zip(gain["model"], gain["pair"])) == {("b-original", "original"), ("b-flipped", "flipped")}
    assert all(gain["n_items"] == 40)
    original = gain[gain["model"] == "b-original"].iloc[0]
    assert original["estimate"] > 0.3 and original["low"] > 0 and original["p_holm"] < 0.01
    per_model = table[table["comparison"] == "per_model"]
    assert set(per_model.loc[per_model["model"] == "b", "pair"]) == {"original", "flipped"}
    assert set(per_model["family"].dropna()) >= {"detection: b, pair original", "detection: b, pair flipped"}
    # the report's variant x evaluation table: one row per model or comparison, the base's detection
    # cell one value per variant; the figure draws every (model, data variant)
    from llm_introspection.report.figures import selfknowledge_detection
    from llm_introspection.report.selfknowledge import headline_table, variant_table

    wide = variant_table(headline_table({"detection": table})).set_index("model / variant")
    assert list(wide.columns) == ["detection"]
    assert set(wide.index) == {"b", "b-original", "b-flipped", "b-original vs b", "b-flipped vs b"}
    assert wide.loc["b", "detection"].count("[") == 2 and "original: " in wide.loc["b", "detection"]
    assert wide.loc["b-original vs b", "detection"].startswith(f"{original['estimate']:.3f} [")
    selfknowledge_detection(table.fillna({"subset": "", "pair": ""}), tmp_path / "detection.png")
    assert (tmp_path / "detection.png").stat().st_size > 0
