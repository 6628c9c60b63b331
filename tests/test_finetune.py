"""Introspection finetuning: the detection data's design and balance check, the prefill's tokenization,
steer-then-remove, a LoRA step, reproducibility, and the lora model source."""

import json

import numpy as np
import pytest
import torch

from conftest import TINY_LLAMA, load_tiny, tiny_spec
from llm_introspection.errors import InputError
from llm_introspection.finetune.data import build_splits, example_ids, mean_residual_norms, options_frame, random_directions
from llm_introspection.finetune.design import Variant, assign_labels, check_balance, check_variant, layer_ranges
from llm_introspection.finetune.steer_remove import read_answers, steered_cache
from llm_introspection.finetune.texts import load_detection_texts
from llm_introspection.finetune.training import add_lora, train_lora
from llm_introspection.models_check import check_lora_sources

from conftest import REPO

TEXTS = REPO / "resources/finetune/detection.yaml"
RANGES = {"early": [0.0, 0.333], "middle": [0.333, 0.667], "late": [0.667, 1.0]}
LORA = {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


# --- design, labels, balance (no model) ----------------------------------------------------------

def test_balance_check_fails_on_a_biased_set():
    check_balance([0, 1] * 10, 0.5, 0.02, "split train")
    with pytest.raises(InputError, match="split train: labels are off balance: 0.600"):
        check_balance([0] * 12 + [1] * 8, 0.5, 0.02, "split train")
    with pytest.raises(InputError, match="off balance"):
        check_balance([1] * 19 + [0], 0.0, 0.02, "deny")  # deny expects no option A at all


def test_variants_label_as_they_say_and_stay_balanced():
    steered = [True, False] * 20
    rng = np.random.default_rng(0)
    truth, _ = assign_labels(steered, Variant("original"), rng)
    assert list(truth[:2]) == [0, 1]
    flipped, corrupted = assign_labels(steered, Variant("f", labels="flipped"), rng)
    assert (flipped == 1 - truth).all() and corrupted.all()
    denied, _ = assign_labels(steered, Variant("d", labels="deny"), rng)
    assert (denied == 1).all()
    for share in (0.25, 0.5, 0.75):
        labels, corrupted = assign_labels(steered, Variant("r", labels="random", corrupt=share), rng)
        assert corrupted.sum() == 2 * round(share * 20 / 2) and (labels[corrupted] != truth[corrupted]).all()
        assert check_balance(labels, 0.5, 0.0, "random") == 0.5


def test_layer_ranges_cover_the_thirds_and_a_single_layer():
    assert layer_ranges(RANGES, 0.5, 30, "thirds") == {
        "early": list(range(1, 11)), "middle": list(range(11, 21)), "late": list(range(21, 31))}
    assert layer_ranges(RANGES, 0.5, 30, "single") == {"single": [15]}


def test_a_variant_naming_missing_texts_fails_naming_its_key():
    texts = load_detection_texts(TEXTS)
    check_variant(Variant("neutral", question="choose", answers="red_blue"), texts.questions, texts.answers)
    with pytest.raises(InputError, match="finetune.variants.x'.*answers 'green_red'"):
        check_variant(Variant("x", answers="green_red"), texts.questions, texts.answers)
    with pytest.raises(InputError, match="corrupt"):
        check_variant(Variant("x", labels="random"), texts.questions, texts.answers)


def test_a_lora_source_must_name_a_model_of_the_config(tmp_path):
    base = {"source": {"kind": "hf", "id": "x"}}
    lora = {"source": {"kind": "lora", "base": "ghost", "adapter": {"variant": "original"}}}
    with pytest.raises(InputError, match="models.ft.source.base': 'ghost' is not one of the models"):
        check_lora_sources({"m": base, "ft": lora}, {"original": {}})
    lora["source"]["base"] = "m"
    check_lora_sources({"m": base, "ft": lora}, {"original": {}})
    with pytest.raises(InputError, match="adapter.variant': 'original' is not one of finetune.variants"):
        check_lora_sources({"m": base, "ft": lora}, {})
    lora["source"]["adapter"] = str(tmp_path)
    with pytest.raises(InputError, match="has no adapter_config.json"):
        check_lora_sources({"m": base, "ft": lora}, {})


# --- on a tiny model -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tokenizer_dir, tmp_path_factory):
    """A tiny random instruct llama (SmolLM2's tokenizer and chat template) and its manifest dir."""
    torch.set_num_threads(1)
    return load_tiny(tokenizer_dir, TINY_LLAMA, tmp_path_factory.mktemp("tiny"), variant="instruct")


def detection_set(model, tokenizer, variant=Variant("original"), sizes=None, magnitudes=(4.0,)):
    texts = load_detection_texts(TEXTS)
    frame = options_frame(tokenizer, texts, variant.answers, True)
    pairs = [example_ids(tokenizer, c, texts.question(variant.question, variant.answers), True, frame.prefill,
                         texts.path) for c in texts.contexts]
    turn1 = [first for first, _ in pairs]
    ranges = layer_ranges(RANGES, 0.5, model.config.num_hidden_layers, variant.layers)
    norms = mean_residual_norms(model, sorted({h for r in ranges.values() for h in r}), turn1, 8)
    width = model.config.hidden_size
    directions = {"train": random_directions(4, width, 1), "heldout": random_directions(4, width, 2)}
    splits = build_splits(variant, sizes or {"train": 16, "validation": 8, "heldout": 8}, directions, list(magnitudes),
                          ranges, norms, turn1, 0.02, 0)
    return splits, pairs[0][1], directions, frame.option_ids


def test_the_prefill_trailing_space_joins_the_answer_token(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = load_detection_texts(TEXTS)
    assert texts.prefill == "The answer is "
    with pytest.raises(InputError, match="key 'answers.foo_bar': the options are not one token each"):
        options_frame(tokenizer, texts, "foo_bar", True)  # " Foo" is two tokens of SmolLM2's tokenizer
    for answers in set(texts.answers) - {"foo_bar", "bar_foo"}:
        frame = options_frame(tokenizer, texts, answers, True)
        # the space goes with the option: " yes" is one token, no lone space token ends the prompt
        assert frame.prefill == "The answer is"
        tokens = tokenizer.convert_ids_to_tokens(list(frame.option_ids))
        assert all(t.startswith("Ġ") and len(t) > 1 for t in tokens), tokens
        for option, token_id in zip(texts.answers[answers], frame.option_ids):
            whole = tokenizer("The answer is " + option, add_special_tokens=False)["input_ids"]
            assert whole[-1] == token_id  # the id the text "The answer is <option>" ends with
    _, question_ids = example_ids(tokenizer, texts.contexts[0], texts.question("detection", "yes_no"), True,
                                  "The answer is", texts.path)
    assert tokenizer.decode(question_ids).endswith("<|im_start|>assistant\nThe answer is")
    assert tokenizer.convert_ids_to_tokens(question_ids[-1:]) != ["Ġ"]


def test_steer_then_remove_leaves_no_hook_and_the_answer_differs_from_an_unsteered_cache(tiny):
    model, tokenizer = tiny
    splits, question_ids, directions, option_ids = detection_set(model, tokenizer)
    examples = [e for e in splits["train"] if e["steered"]][:4]
    unsteered = [e | {"steered": False} for e in examples]
    steered_lp = read_answers(model, examples, question_ids, directions, option_ids, 4)
    plain_lp = read_answers(model, unsteered, question_ids, directions, option_ids, 4)
    assert not np.allclose(steered_lp, plain_lp, atol=1e-4)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert hooks == 0
    # an unsteered read from the cache equals one pass over the whole conversation
    with torch.no_grad():
        full = model(input_ids=torch.tensor([unsteered[0]["turn1_ids"] + question_ids])).logits[0, -1]
    expected = torch.log_softmax(full.double(), -1)[list(option_ids)].numpy()
    assert np.allclose(plain_lp[0], expected, atol=1e-4)
    # the hooks come off even when the steered pass fails
    with pytest.raises(Exception):
        steered_cache(model, [examples[0] | {"strengths": [1.0] * 99, "layers": [99]}], directions)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


def train_tiny(tokenizer_dir, tmp_path, seed=0, epochs=2):
    model, tokenizer = load_tiny(tokenizer_dir, TINY_LLAMA, tmp_path, variant="instruct")
    splits, question_ids, directions, option_ids = detection_set(model, tokenizer, sizes={"train": 16, "validation": 8,
                                                                                          "heldout": 2})
    peft_model = add_lora(model, LORA, seed)
    settings = {"epochs": epochs, "batch_size": 8, "learning_rate": 0.01, "seed": seed, "keep": "last"}
    result = train_lora(peft_model, splits["train"], splits["validation"], question_ids, directions, option_ids,
                        settings, log=lambda _: None)
    return peft_model, result, (splits, question_ids, directions, option_ids)


def test_training_lowers_the_loss_and_records_the_kept_checkpoint(tokenizer_dir, tmp_path):
    from llm_introspection.finetune.training import evaluate

    torch.set_num_threads(1)
    peft_model, result, (splits, question_ids, directions, option_ids) = train_tiny(tokenizer_dir, tmp_path)
    assert [r["step"] for r in result["losses"]] == [1, 2, 3, 4]
    assert [r["epoch"] for r in result["validation"]] == [0, 1, 2]
    assert result["kept"] | {"validation": None} == {"epoch": 2, "step": 4, "criterion": "last", "validation": None,
                                                    "rule": "the last epoch"}
    after = evaluate(peft_model.get_base_model(), splits["train"], question_ids, directions, option_ids, 8)
    with peft_model.disable_adapter():
        before = evaluate(peft_model.get_base_model(), splits["train"], question_ids, directions, option_ids, 8)
    assert after["loss"] < before["loss"] - 0.05


def test_the_same_config_and_seed_give_identical_adapter_bytes(tokenizer_dir, tmp_path):
    from llm_introspection.finetune.jobs import save_adapter

    torch.set_num_threads(1)
    files = []
    for run in ("a", "b"):
        peft_model, _, _ = train_tiny(tokenizer_dir, tmp_path / run, epochs=1)
        save_adapter(peft_model, "tiny", tmp_path / run / "adapter")
        files.append({f: (tmp_path / run / "adapter" / f).read_bytes()
                      for f in ("adapter_model.safetensors", "adapter_config.json")})
    assert files[0] == files[1]
    assert json.loads(files[0]["adapter_config.json"])["base_model_name_or_path"] == "tiny"  # no path recorded


def test_a_lora_source_loads_merged_and_a_zero_adapter_changes_nothing(tokenizer_dir, tmp_path):
    from llm_introspection.finetune.jobs import save_adapter
    from llm_introspection.models import load_model, prepare_lora, prepare_model

    torch.set_num_threads(1)
    base = prepare_model("tiny", tiny_spec(tokenizer_dir, TINY_LLAMA, "instruct"), tmp_path / "base")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        reference = load_model(base, "cpu", torch.float32)(input_ids=ids).logits
    spec = {"family": "llama", "size_b": 1e-5, "variant": "instruct", "frame": "native",
            "source": {"kind": "lora", "base": "tiny", "adapter": {"variant": "original"}}}
    peft_model = add_lora(load_model(base, "cpu", torch.float32), LORA, 0)  # B = 0: the identity update
    save_adapter(peft_model, "tiny", tmp_path / "zero")
    manifest = prepare_lora("tiny-ft", spec, base, tmp_path / "zero")
    assert manifest["base"]["name"] == "tiny" and manifest["revision"].startswith(base["revision"] + "+lora-sha256:")
    assert manifest["adapter"]["settings"]["r"] == 4
    with torch.no_grad():
        zero = load_model(manifest, "cpu", torch.float32)
        assert not any("lora" in name for name, _ in zero.named_parameters())  # merged: plain modules
        assert torch.allclose(zero(input_ids=ids).logits, reference, atol=1e-6)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    save_adapter(peft_model, "tiny", tmp_path / "trained")
    manifest = prepare_lora("tiny-ft", spec, base, tmp_path / "trained")
    with torch.no_grad():
        changed = load_model(manifest, "cpu", torch.float32)(input_ids=ids).logits
    assert not torch.allclose(changed, reference, atol=1e-3)
    (tmp_path / "trained" / "adapter_config.json").write_text("{}")
    with pytest.raises(InputError, match="changed since it was prepared"):
        load_model(manifest, "cpu", torch.float32)


def test_an_unreadable_finetune_file_names_the_rule_that_rebuilds_it():
    from llm_introspection.storage import producer

    assert producer("/x/results/finetune/m/original/data/heldout.json") == (
        "detection_data", "results/finetune/m/original/data/heldout.json")
    assert producer("results/finetune/m/original/adapter/adapter_model.safetensors")[0] == "finetune"
    assert producer("results/finetune/m/original/training.json")[0] == "finetune"


def test_concept_variant_directions_are_unit_concept_vectors_split_into_two_pools(tiny):
    from llm_introspection.finetune.data import concept_directions
    from llm_introspection.injection.texts import load_concept_words

    model, tokenizer = tiny
    words = load_concept_words(REPO / "resources/concepts/concepts.yaml")
    record = {"variant": "instruct", "frame": "native", "name": "tiny"}
    pools = concept_directions(model, tokenizer, words, record, 2, {"train": 2, "heldout": 3}, 16)
    (train_names, train), (heldout_names, heldout) = pools["train"], pools["heldout"]
    assert train_names == list(words.concepts[:2]) and heldout_names == list(words.concepts[2:5])
    assert train.shape == (2, 32) and heldout.shape == (3, 32)
    assert np.allclose(np.linalg.norm(np.vstack([train, heldout]), axis=1), 1, atol=1e-5)
    with pytest.raises(InputError, match="need 60 concepts"):
        concept_directions(model, tokenizer, words, record, 2, {"train": 30, "heldout": 30}, 16)


def test_lora_variants_are_their_own_condition_never_pooled_with_base_and_instruct():
    """A LoRA variant (recorded as variant instruct) would otherwise join the core study's instruct
    group and break its family's base/instruct pair."""
    import pandas as pd

    from llm_introspection.records import base_instruct_pairs, condition, condition_tables

    base = {"family": "f", "size_b": 1.0, "variant": "base", "frame": "base", "source": {"kind": "local"}}
    instruct = base | {"variant": "instruct", "frame": "native"}
    lora = instruct | {"source": {"kind": "lora", "base": "i"}}
    models = {"b": base, "i": instruct, "i-ft": lora}
    assert [condition(m) for m in models.values()] == ["native", "native", "finetuned"]
    table = pd.DataFrame([{"model": n, "variant": m["variant"], "condition": condition(m)} for n, m in models.items()])
    assert list(condition_tables(table)["native"]["model"]) == ["b", "i"]
    native = {n: m for n, m in models.items() if condition(m) == "native"}
    assert base_instruct_pairs(native) == [("b", "i")] and base_instruct_pairs(models) == []
