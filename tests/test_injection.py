"""Concept injection experiments: resources, prompts, steered readouts and sampling, records, grading."""

import copy
import dataclasses
import json
import math
import re
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, TINY_GEMMA3, TINY_LLAMA, load_tiny
from llm_introspection.injection import inputs
from llm_introspection.injection.concepts import (
    concept_prompt_ids, matched_random_vectors, mean_residual_norm, mean_subtraction_vectors, save_vectors, sentence_ids,
)
from llm_introspection.injection.texts import load_concept_words, load_neutral_sentences
from llm_introspection.errors import InputError
from llm_introspection.injection.cell import open_cell, write_records
from llm_introspection.injection.detection import (
    run_detection_logits, run_detection_responses, run_forced_identification,
)
from llm_introspection.injection.grading import grade_responses
from llm_introspection.injection.inputs import answer_start, detection_prompt, leak_prompt, localization_prompt
from llm_introspection.injection.localization import run_localization
from llm_introspection.injection.texts import (
    CRITERIA, INSTRUCTIONS, AnswerSpec, load_detection_texts, load_grading_rubric, load_localization_texts, load_thought_texts, provenance,
)
from llm_introspection.injection.thought import run_intentional_control, run_prefill_intent, run_thought_vs_text
from llm_introspection.readout import shared
from llm_introspection.readout.options import first_token_ids, option_answers
from llm_introspection.readout.steered import Trial, read_continuations, read_options
from llm_introspection.injection.statistics import read_records
from llm_introspection.sampling import SamplingParams, eos_token_ids, sample_completions
from llm_introspection.steering import Positions, steer, token_span
from llm_introspection.modules import decoder_layers
from llm_introspection.tracing import capture_residual

DETECTION = REPO / "resources/injection/detection.yaml"
LOCALIZATION = REPO / "resources/injection/localization.yaml"
RUBRIC = REPO / "resources/injection/grading_rubric.yaml"
THOUGHT = REPO / "resources/injection/thought_and_intent.yaml"
SENTENCES = load_neutral_sentences(REPO / "resources/concepts/neutral_sentences.yaml")
ARCHITECTURES = {"llama": TINY_LLAMA, "gemma3": TINY_GEMMA3}
CELL_COLUMNS = {"experiment", "model", "layer", "vector_method", "strength_relative", "mean_norm"}
TRIAL_COLUMNS = {"kind", "concept", "question", "strength_absolute", "prediction", "correct"}


@pytest.fixture(scope="module")
def det():
    return load_detection_texts(DETECTION)


@pytest.fixture(scope="module")
def loc():
    return load_localization_texts(LOCALIZATION)


@pytest.fixture(scope="module")
def rubric():
    return load_grading_rubric(RUBRIC)


@pytest.fixture(scope="module")
def thought():
    return load_thought_texts(THOUGHT)


@pytest.fixture(scope="module", params=ARCHITECTURES, ids=list(ARCHITECTURES))
def tiny(request, tokenizer_dir, tmp_path_factory):
    return load_tiny(tokenizer_dir, ARCHITECTURES[request.param], tmp_path_factory.mktemp(request.param), "instruct")


@pytest.fixture(scope="module")
def llama(tokenizer_dir, tmp_path_factory):
    return load_tiny(tokenizer_dir, TINY_LLAMA, tmp_path_factory.mktemp("llama"), "instruct")


def vector_file(path, names, vectors, layer, model="tiny", baseline=None):
    save_vectors(path, np.asarray(vectors, dtype=np.float32), names, model=model, layer=layer,
                 method="mean_subtraction", baseline=baseline)
    return path


def random_cell(model, tokenizer, tmp_path, names=("Dust", "Snow", "Bread"), layer=2, strength=4.0, seed=0):
    """Random concept vectors of varied norms, and 6 baseline vectors in a 6-dimensional subspace."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(names), model.config.hidden_size)) * np.arange(1, len(names) + 1)[:, None]
    baseline = rng.standard_normal((6, model.config.hidden_size))
    path = vector_file(tmp_path / f"vectors_{layer}.h5", names, vectors, layer, baseline=baseline - baseline.mean(0))
    norm = mean_residual_norm(model, layer, sentence_ids(SENTENCES[:4], tokenizer), batch_size=4)
    return open_cell(path, "tiny", True, strength, norm)


@contextmanager
def recording(model, layer):
    """Per forward call: the input ids, the attention mask, and hidden state `layer` as the next
    block receives it (after every hook on the layer's own output, steering included)."""
    calls = []

    def keep_ids(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        calls.append({"ids": kwargs["input_ids"].clone(),
                      "mask": torch.ones_like(kwargs["input_ids"]) if mask is None else mask.clone()})

    def keep_state(module, args, kwargs):
        calls[-1]["state"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    handles = [model.get_decoder().register_forward_pre_hook(keep_ids, with_kwargs=True),
               decoder_layers(model)[layer].register_forward_pre_hook(keep_state, with_kwargs=True)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def token_id(tokenizer, token):
    (index,) = tokenizer.convert_tokens_to_ids([token])
    return index


# --- resources and prompts ----------------------------------------------------------------------

def test_resources_validate(det, loc, rubric, thought):
    assert det.question.startswith("Trial 1:") and det.answer.options == ("Yes", "No")
    assert det.forced_prefill.endswith("The thought is about")
    assert det.wordings[0] == det.question and len(det.wordings) == 13
    assert len(det.control_questions) == len(det.leak_requests) == 12 and det.leak_prefill == "Sure. The word is"
    assert loc.n_sentences == 5 and loc.introspection == "locate"
    assert set(loc.questions) == {"locate", "prefer", "abstract", "stands_out", "first", "last"}
    assert (loc.preamble, loc.acknowledgement) == (det.preamble, "Ok.")  # Godet: Lindsey's preamble, "Ok."
    assert loc.questions["locate"].prefill == "Yes, I detect an injected thought. It is located in SENTENCE"
    assert all(q.prefill.endswith("SENTENCE") for q in loc.questions.values())
    assert tuple(rubric.criteria) == CRITERIA and rubric.options == ("Yes", "No")
    assert tuple(thought.instructions) == INSTRUCTIONS and thought.intent_answer.options == ("Yes", "No")
    assert "{word}" in thought.instructions["think"] and "{word}" not in thought.instructions["neutral"]
    assert all(len(sha) == 64 for sha in (det.sha256, loc.sha256, rubric.sha256, thought.sha256))


def test_detection_variants_name_no_concept_or_baseline_word(det):
    """A control question or leak request that named a concept would be answered differently when
    that concept is injected for a reason other than steering alone."""
    words = load_concept_words(REPO / "resources/concepts/concepts.yaml")
    stems = {w.lower().rstrip("s") for w in words.concepts + words.baseline}
    for text in (*det.wordings, *det.control_questions, *det.leak_requests, det.leak_prefill):
        named = {t.rstrip("s") for t in re.findall(r"[a-z]+", text.lower())} & stems
        assert not named, (text, named)


def edited(tmp_path, source, edit):
    data = yaml.safe_load(source.read_text())
    edit(data)
    path = tmp_path / source.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("source,load,edit,message", [
    (LOCALIZATION, load_localization_texts, lambda d: d.update(n_sentences=12),
     r"key 'n_sentences': 12 is greater than the maximum of 9"),
    (LOCALIZATION, load_localization_texts, lambda d: d.update(template="{sentences} {topic}"),
     r"key 'template': unknown field \{topic\}, no \{question\}"),
    (LOCALIZATION, load_localization_texts, lambda d: d.update(introspection="where"),
     r"key 'introspection': 'where' is not one of the questions"),
    (LOCALIZATION, load_localization_texts, lambda d: d["questions"]["prefer"].pop("prefill"),
     r"key 'questions.prefer': 'prefill' is a required property"),
    (DETECTION, load_detection_texts, lambda d: d["answer"].update(options=["Yes"]),
     r"key 'answer.options'"),
    (DETECTION, load_detection_texts, lambda d: d["paraphrases"].append(d["question"].upper()),
     r"keys 'question' and 'paraphrases' together holds"),
    (DETECTION, load_detection_texts, lambda d: d["leak"].pop("prefill"),
     r"key 'leak': 'prefill' is a required property"),
    (RUBRIC, load_grading_rubric, lambda d: d["criteria"].update(identifies="Is it right?"),
     r"key 'criteria.identifies': no \{word\}"),
    (RUBRIC, load_grading_rubric, lambda d: d.update(user_template="{criterion}"),
     r"key 'user_template': no \{response\}"),
    (THOUGHT, load_thought_texts,
     lambda d: d["intentional_control"].update(dont_think='Write "{sentence}" without a thought.'),
     r"key 'intentional_control.dont_think': no \{word\}"),
    (THOUGHT, load_thought_texts, lambda d: d["thought_vs_text"].pop("thought_prefill"),
     r"key 'thought_vs_text': 'thought_prefill' is a required property"),
])
def test_bad_resources_name_the_file_and_key(tmp_path, source, load, edit, message):
    path = edited(tmp_path, source, edit)
    with pytest.raises(InputError, match=re.escape(str(path)) + r"(.|\n)*" + message):
        load(path)


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "transcript"])
def test_detection_prompt_injects_from_the_question_on(llama, det, chat):
    _, tokenizer = llama
    prefill = answer_start(det.answer.prefill, chat)
    ids, start = detection_prompt(tokenizer, det, chat, prefill)
    text = tokenizer.decode(ids)
    assert tokenizer.decode(ids[start:]).lstrip().startswith("Trial 1: Do you detect an injected thought?")
    assert "Trial" not in tokenizer.decode(ids[:start]) and det.preamble in tokenizer.decode(ids[:start])
    if chat:
        assert text.endswith("<|im_start|>assistant\nAnswer:") and text.count("<|im_start|>user") == 2
    else:
        assert text.startswith(f"User: {det.preamble}\n\nAssistant: {det.acknowledgement}\n\nUser: {det.opening}")
        assert text.endswith("\n\nAssistant: Answer:")


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "transcript"])
@pytest.mark.parametrize("preamble", [True, False], ids=["preamble", "one_message"])
def test_localization_prompt_order_and_sentence_spans(llama, loc, chat, preamble):
    """Godet's order (preamble, "Ok.", the sentences and the question, the prefill), or one user
    message without the preamble; each span decodes to exactly its sentence, in the trial's turn."""
    _, tokenizer = llama
    texts = loc if preamble else dataclasses.replace(loc, preamble=None, acknowledgement=None)
    chosen = list(SENTENCES[10:15])
    prefill = answer_start(loc.questions["locate"].prefill, chat)
    ids, spans = localization_prompt(tokenizer, texts, chosen, "locate", chat, prefill)
    text = tokenizer.decode(ids)
    assert [tokenizer.decode(ids[a:b]).strip() for a, b in spans] == chosen
    assert all(b <= c for (_, b), (c, _) in zip(spans, spans[1:]))
    trial = text.index("Here are 5 sentences")
    assert len(tokenizer.decode(ids[: spans[0][0]])) > trial  # the first sentence is in the trial's turn
    assert text.index("SENTENCE 3: " + chosen[2]) < text.index(loc.questions["locate"].question) < len(text) - len(prefill)
    assert text.endswith("Yes, I detect an injected thought. It is located in SENTENCE")
    users = text.count("<|im_start|>user") if chat else text.count("User: ")
    assert users == (2 if preamble else 1)
    if preamble:
        ack = "<|im_start|>assistant\nOk.<|im_end|>" if chat else "\n\nAssistant: Ok.\n\nUser: Here are"
        assert text.index(loc.preamble) < text.index(ack) < trial
    else:
        assert "researcher" not in text and "Ok." not in text


def test_token_span_maps_characters_to_tokens():
    # "<s>Hello world. The cat sat."
    offsets = [(0, 0), (0, 5), (5, 11), (11, 12), (12, 16), (16, 20), (20, 24), (24, 25)]
    assert token_span(offsets, 13, 25) == (4, 8)  # " The" starts at the space before the sentence
    assert token_span(offsets, 0, 5) == (1, 2)  # the special token's empty offsets never count
    with pytest.raises(ValueError, match="no token covers"):
        token_span(offsets, 30, 31)


def test_answer_tokens_of_the_real_tokenizer(llama, det, loc):
    _, tokenizer = llama
    assert first_token_ids(tokenizer, det.forced_prefill, ["dust", "trumpets", "trump"]) == [
        token_id(tokenizer, "Ġdust"), token_id(tokenizer, "Ġtrump"), token_id(tokenizer, "Ġtrump")]
    frame = inputs.option_frame(tokenizer, det.answer, chat=True)
    assert frame.option_ids == (token_id(tokenizer, "ĠYes"), token_id(tokenizer, "ĠNo"))
    spec = AnswerSpec(loc.path, loc.questions["locate"].prefill, " ", ("1", "2", "3"))
    frame = inputs.option_frame(tokenizer, spec, chat=True)
    assert frame.prefill.endswith("SENTENCE ") and frame.option_ids == tuple(token_id(tokenizer, d) for d in "123")


def test_option_answers_on_hand_built_log_probs():
    log_probs = np.log([[0.1, 0.2, 0.5], [0.3, 0.3, 0.1]])
    probs, chosen, mass = option_answers(log_probs)
    np.testing.assert_allclose(probs, [[0.125, 0.25, 0.625], [3 / 7, 3 / 7, 1 / 7]])
    assert chosen.tolist() == [2, 0] and np.allclose(mass, [0.8, 0.7])


# --- steered readouts ---------------------------------------------------------------------------

def test_mixed_batches_equal_each_trial_alone_and_controls_run_unsteered(llama):
    model, tokenizer = llama
    long = tokenizer("A much longer prompt with quite a few more words in it than the other.")["input_ids"]
    short = tokenizer("Short prompt here.")["input_ids"]
    vectors = torch.randn(2, model.config.hidden_size, generator=torch.Generator().manual_seed(0)).numpy()
    trials = [Trial(tuple(long), 3, len(long), vectors[0], 5.0), Trial(tuple(short)),
              Trial(tuple(short), 1, 3, vectors[1], 5.0)]
    options = [5, 17, 300, 4000]
    batched = read_options(model, 2, trials, options, batch_size=3)
    alone = np.concatenate([read_options(model, 2, [t], options, batch_size=1) for t in trials])
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    with torch.no_grad():
        plain = [torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], -1)[options].numpy()
                 for ids in (long, short)]
    np.testing.assert_allclose(batched[1], plain[1], atol=1e-5)
    assert not np.allclose(batched[0], plain[0], atol=1e-3) and not np.allclose(batched[2], plain[1], atol=1e-3)


def test_localization_steers_exactly_the_tokens_of_the_chosen_sentence(tiny, loc, tmp_path):
    """One batch holds, for one sentence set, the concept vector on sentence k (rows 0..n-1), a
    random vector on sentence k (rows n..2n-1) and the control (row 2n). Compared with the same
    batch at strength 0, each row must differ by exactly strength x vector on the tokens that
    decode to sentence k, and the control not at all."""
    model, tokenizer = tiny
    cell = random_cell(model, tokenizer, tmp_path, layer=2)
    zero = open_cell(cell.vector_path, "tiny", True, 0.0, cell.mean_norm)
    # one full pass per row (the shared-prefix read-out splits it: tests/test_shared_readout.py)
    run = dict(sentences=SENTENCES, n_trials=1, n_sentences=4, questions=["locate"], batch_size=64, seed=5,
               share_prefix=False)
    with recording(model, 2) as calls:
        records = run_localization(model, tokenizer, cell, loc, **run)
    with recording(model, 2) as plain_calls:
        run_localization(model, tokenizer, zero, loc, **run)
    (call,), (plain,) = calls, plain_calls
    assert torch.equal(call["ids"], plain["ids"]) and len(records) == 9
    chosen = [SENTENCES[i] for i in records[0]["sentence_ids"]]
    noise = matched_random_vectors(cell.vectors.vector("Dust")[None], seed=[5, 0])[0]
    for row, record in enumerate(records):
        difference = call["state"][row] - plain["state"][row]
        if record["kind"] == "control":
            assert torch.equal(difference, torch.zeros_like(difference))
            continue
        steered = difference.abs().sum(-1).nonzero().flatten().tolist()
        assert steered == list(range(steered[0], steered[-1] + 1))
        assert tokenizer.decode(call["ids"][row, steered]).strip() == chosen[record["injected_position"] - 1]
        vector = cell.vectors.vector("Dust") if record["kind"] == "injected" else noise
        expected = torch.from_numpy(record["strength_absolute"] * vector).expand(len(steered), -1)
        torch.testing.assert_close(difference[steered], expected, atol=1e-4, rtol=1e-4)
        assert float(torch.from_numpy(record["strength_absolute"] * vector).norm()) == pytest.approx(
            cell.strength * cell.mean_norm, rel=1e-5)


# --- planted answers ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def planted(llama, tmp_path_factory):
    """The tiny llama with answers fixed by construction: the (tied) embeddings of " Yes", " No"
    and the first tokens of " dust", " snow", " bread" are set along basis directions; injected
    at the last hidden state (before the final norm) at 100x the residual norm, concept vector
    e_c makes its word's token the most probable candidate, and " Yes" wins over " No" for Dust
    and Bread and loses for Snow. The baseline vectors span e_10..e_15, orthogonal to all of these."""
    model, tokenizer = llama
    model = copy.deepcopy(model)
    embeddings = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is embeddings
    basis = torch.eye(model.config.hidden_size)
    yes = 3 * (basis[2] - basis[3] + basis[4]) / math.sqrt(3)
    with torch.no_grad():
        embeddings[token_id(tokenizer, "ĠYes")] = yes
        embeddings[token_id(tokenizer, "ĠNo")] = -yes
        for k, word in zip((2, 3, 4), ("Ġdust", "Ġsnow", "Ġbread")):
            embeddings[token_id(tokenizer, word)] = 3 * basis[k]
    layer = model.config.num_hidden_layers
    path = vector_file(tmp_path_factory.mktemp("planted") / "v.h5", ["Dust", "Snow", "Bread"], basis[2:5], layer,
                       baseline=basis[10:16] - basis[10:16].mean(0))
    norm = mean_residual_norm(model, layer, sentence_ids(SENTENCES[:4], tokenizer), batch_size=4)
    return model, tokenizer, open_cell(path, "tiny", True, 100.0, norm), yes


def test_planted_detection_answers_controls_and_the_yes_bias_arm(planted, det):
    model, tokenizer, cell, _ = planted
    records = run_detection_logits(model, tokenizer, cell, det, n_variants=2, min_option_mass=0.05, batch_size=4)
    names = ["Dust", "Snow", "Bread"]
    assert [(r["question"], r["variant"], r["kind"], r["concept"]) for r in records] == [
        ("detect", v, kind, n) for v in (0, 1) for kind, n in
        [*(("injected", n) for n in names), *(("random", n) for n in names), ("control", None)]
    ] + [("control_question", v, kind, n) for v in (0, 1) for kind, n in [*(("injected", n) for n in names),
                                                                           ("control", None)]]
    for question in ("detect", "control_question"):
        injected = [r for r in records if r["question"] == question and r["kind"] == "injected"]
        # the planted vectors push yes or no whatever the question: the control questions see the same bias
        assert [r["prediction"] for r in injected] == ["yes", "no", "yes"] * 2
        assert injected[0]["p_yes"] > 0.999 and injected[1]["p_yes"] < 0.001
    detect = [r for r in records if r["question"] == "detect"]
    assert [r["correct"] for r in detect if r["kind"] == "injected"] == [True, False, True] * 2
    asked = [r for r in records if r["question"] == "control_question"]
    assert all(r["correct"] == (r["prediction"] == "no") for r in asked)
    # random vectors of the same norm, orthogonal to the yes/no directions: the answer tokens lose their mass
    random = [r for r in detect if r["kind"] == "random"]
    assert all(r["low_mass"] and r["option_mass"] < 0.05 and r["correct"] is None for r in random)
    assert all(r["low_mass"] == (r["option_mass"] < 0.05) for r in records)
    frame = inputs.option_frame(tokenizer, det.answer, True)
    for r in (r for r in records if r["kind"] == "control"):
        question = (det.wordings if r["question"] == "detect" else det.control_questions)[r["variant"]]
        ids, _ = detection_prompt(tokenizer, det, True, frame.prefill, question)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        options = torch.log_softmax(logits, -1)[list(frame.option_ids)]
        assert r["p_yes"] == pytest.approx(float(torch.softmax(options, -1)[0]), abs=1e-6)
        assert r["option_mass"] == pytest.approx(float(options.exp().sum()), rel=1e-5)
        assert r["strength_absolute"] == 0
    assert all(r.keys() >= CELL_COLUMNS | TRIAL_COLUMNS | {"variant", "p_yes", "p_no", "option_mass", "low_mass"}
               for r in records)
    assert records[0]["layer"] == model.config.num_hidden_layers and records[0]["strength_relative"] == 100.0


def unpadded_rows(calls):
    """Every row of every recorded forward call, its padding cut: one tuple of ids per sequence."""
    return [tuple(ids[mask.bool()].tolist()) for call in calls for ids, mask in zip(call["ids"], call["mask"])]


def test_detection_logits_run_one_pass_per_trial_and_random_vectors_like_concept_vectors(llama, det, tmp_path):
    """Every record is one row of one forward pass; the unsteered controls are as many distinct
    inputs as variants; compared with the same run at strength 0, a random trial adds on its
    steered positions a vector of the cell's norm (the injected concept vectors' norm) that lies in
    the span of the baseline vectors and is none of the concept vectors."""
    model, tokenizer = llama
    cell = random_cell(model, tokenizer, tmp_path)
    zero = open_cell(cell.vector_path, "tiny", True, 0.0, cell.mean_norm)
    run = dict(n_variants=3, seed=2, batch_size=5)
    with recording(model, 2) as calls:
        records = run_detection_logits(model, tokenizer, cell, det, **run)
    with recording(model, 2) as plain_calls:
        run_detection_logits(model, tokenizer, zero, det, **run)
    assert len(records) == 3 * (3 + 3 + 1) + 3 * (3 + 1)
    rows = unpadded_rows(calls)
    assert len(rows) == len(records)
    prefill = inputs.option_frame(tokenizer, det.answer, True).prefill
    controls = {(r["question"], r["variant"]): row for r, row in zip(records, rows) if r["kind"] == "control"}
    assert len(controls) == 6 and len(set(controls.values())) == 6
    for (question, v), row in controls.items():
        text = (det.wordings if question == "detect" else det.control_questions)[v]
        assert list(row) == detection_prompt(tokenizer, det, True, prefill, text)[0]
    differences = [state - plain_state for call, plain in zip(calls, plain_calls)
                   for state, plain_state in zip(call["state"], plain["state"])]
    baseline = torch.from_numpy(cell.vectors.baseline).double()
    projector = baseline.T @ torch.linalg.pinv(baseline.T)
    concepts = torch.from_numpy(cell.vectors.vectors).double()
    for record, difference in zip(records, differences):
        norms = difference.double().norm(dim=-1)
        if record["kind"] == "control":
            assert float(norms.max()) == 0
            continue
        steered = norms.nonzero().flatten()
        assert norms[steered].numpy() == pytest.approx(cell.strength * cell.mean_norm, rel=1e-4)
        added = difference[steered[-1]].double()
        cosines = torch.nn.functional.cosine_similarity(concepts, added[None], dim=-1).abs()
        if record["kind"] == "random":
            assert float((added - projector @ added).norm()) < 1e-3 * float(added.norm())
            assert float(cosines.max()) < 0.99
        else:
            assert float(cosines[cell.vectors.names.index(record["concept"])]) > 0.9999
    for v in range(3):
        vectors = [vector for vector, _ in cell.random_injections(cell.vectors.names, [2, v])]
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), np.linalg.norm(cell.vectors.vectors, axis=-1),
                                   rtol=1e-5)
    assert records == run_detection_logits(model, tokenizer, cell, det, **run)
    assert [r["p_yes"] for r in records if r["kind"] == "random"] != [
        r["p_yes"] for r in run_detection_logits(model, tokenizer, cell, det, **(run | {"seed": 3}))
        if r["kind"] == "random"]


def test_planted_forced_identification_ranks_the_injected_word_first(planted, det):
    model, tokenizer, cell, _ = planted
    records = run_forced_identification(model, tokenizer, cell, det, n_variants=3)
    for question in ("forced_identification", "leak"):
        injected = [r for r in records if r["kind"] == "injected" and r["question"] == question]
        assert [(r["variant"], r["concept"], r["rank"], r["top1"], r["prediction"]) for r in injected] == [
            (v, n, 1, True, n) for v in range(3) for n in ("Dust", "Snow", "Bread")]
        assert all(r["candidate_mass"] > 0.99 for r in injected)
        control = [r for r in records if r["kind"] == "control" and r["question"] == question]
        assert [(r["variant"], r["concept"]) for r in control] == [(0, "Dust"), (1, "Snow"), (2, "Bread")]
    assert all(r["n_candidates"] == 3 and not r["shared_first_token"] for r in records)


def test_forced_identification_controls_are_one_pass_per_variant_and_the_leak_asks_no_thought(llama, det, tmp_path):
    model, tokenizer = llama
    cell = random_cell(model, tokenizer, tmp_path)
    with recording(model, 2) as calls:
        records = run_forced_identification(model, tokenizer, cell, det, n_variants=4, batch_size=3)
    rows = unpadded_rows(calls)
    assert len(records) == len(rows) == 2 * 4 * (3 + 1)
    for question in ("forced_identification", "leak"):
        controls = [(r, row) for r, row in zip(records, rows) if r["kind"] == "control" and r["question"] == question]
        assert [r["concept"] for r, _ in controls] == ["Dust", "Snow", "Bread", "Dust"]
        assert len({row for _, row in controls}) == 4 and all(r["strength_absolute"] == 0 for r, _ in controls)
    leak = [tokenizer.decode(row) for r, row in zip(records, rows) if r["question"] == "leak"]
    assert all("thought" not in text.lower() and text.endswith("assistant\nSure. The word is") for text in leak)
    assert {text for text in leak} == {tokenizer.decode(leak_prompt(tokenizer, det, request, True, "Sure. The word is")[0])
                                       for request in det.leak_requests[:4]}
    ids, start = leak_prompt(tokenizer, det, det.leak_requests[0], True, "Sure. The word is")
    assert tokenizer.decode(ids[start:]).startswith(det.leak_requests[0])


def test_a_shared_first_token_never_ranks_first(llama, det, tmp_path):
    model, tokenizer = llama
    cell = random_cell(model, tokenizer, tmp_path, names=("Trumpets", "Trump", "Snow"))
    records = run_forced_identification(model, tokenizer, cell, det, n_variants=3)
    by_name = {(r["kind"], r["concept"]): r for r in records if r["question"] == "forced_identification"}
    for kind in ("injected", "control"):
        assert by_name[(kind, "Trumpets")]["shared_first_token"] and by_name[(kind, "Trump")]["shared_first_token"]
        assert by_name[(kind, "Trumpets")]["rank"] >= 2 and by_name[(kind, "Trump")]["rank"] >= 2
        assert not by_name[(kind, "Snow")]["shared_first_token"]


# --- sampling and grading -----------------------------------------------------------------------

def test_detection_responses_steer_injected_trials_only_and_are_reproducible(llama, det, tmp_path):
    model, tokenizer = llama
    cell = random_cell(model, tokenizer, tmp_path, strength=8.0)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=6)
    records = run_detection_responses(model, tokenizer, cell, det, params, samples=2, seed=3, batch_size=3,
                                      concepts=["Dust", "Snow"])
    assert [(r["kind"], r["concept"], r["seed"]) for r in records] == [
        ("injected", "Dust", 3), ("injected", "Dust", 4), ("injected", "Snow", 3), ("injected", "Snow", 4),
        ("control", None, 3), ("control", None, 4), ("control", None, 5), ("control", None, 6)]
    assert records == run_detection_responses(model, tokenizer, cell, det, params, samples=2, seed=3, batch_size=3,
                                              concepts=["Dust", "Snow"])
    ids, _ = detection_prompt(tokenizer, det, True)
    plain = sample_completions(model, [ids] * 5, [3, 4, 5, 6, 3], params, eos_token_ids(model, tokenizer), 0, 5, 1)
    assert [r["token_ids"] for r in records[4:]] == [c.token_ids for c in plain[:4]]
    assert records[0]["token_ids"] != plain[4].token_ids or records[2]["token_ids"] != plain[4].token_ids
    assert all(r["text"] == tokenizer.decode(r["token_ids"], skip_special_tokens=True) for r in records)
    assert all(r.keys() >= CELL_COLUMNS | {"kind", "concept", "sample", "seed", "stop_reason"} for r in records)


RESPONSES = [
    {"kind": "injected", "concept": "Snow", "text": "Yes, I notice something cold and white: snow."},
    {"kind": "control", "concept": None, "text": "No, I do not notice anything unusual."},
]


def test_grading_prompts_name_the_concept_and_the_response(llama, rubric, det, monkeypatch):
    model, tokenizer = llama
    seen = []

    def fake_log_probs(model, tokenizer, sequences, option_ids, batch_size, setting):
        seen.extend(tokenizer.decode(s) for s in sequences)
        return torch.log(torch.tensor([[0.3, 0.1]] * len(sequences), dtype=torch.float64))

    monkeypatch.setattr(shared, "option_log_probs", fake_log_probs)
    graded = grade_responses(model, tokenizer, RESPONSES, rubric, det.question, share_prefix=False)
    assert len(seen) == 4 + 2
    assert all(det.question in text and text.rstrip().endswith("Answer:") for text in seen)
    assert all(RESPONSES[0]["text"] in text for text in seen[:4])
    assert all(RESPONSES[1]["text"] in text for text in seen[4:])
    assert 'about the word "snow"' in seen[2] and 'about the word "snow"' in seen[3] and "{word}" not in "".join(seen)
    assert graded[0]["p_identifies"] == pytest.approx(0.75) and graded[0]["identifies"] is True
    assert graded[1]["p_identifies"] is None and graded[1]["detected_and_identified"] is None
    assert graded[1]["p_coherent"] == pytest.approx(0.75)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_grading_with_shared_prefixes_equals_full_passes(llama, rubric, det, batch_size):
    model, tokenizer = llama
    full = grade_responses(model, tokenizer, RESPONSES, rubric, det.question, batch_size=batch_size, share_prefix=False)
    shared = grade_responses(model, tokenizer, RESPONSES, rubric, det.question, batch_size=batch_size)
    columns = [f"{kind}_{c}" for c in CRITERIA for kind in ("p", "mass")]
    values = [[np.nan if r[c] is None else r[c] for c in columns] for r in (*full, *shared)]
    np.testing.assert_allclose(values[2:], values[:2], atol=1e-7, rtol=1e-4)
    assert np.nanstd(values[0][::2]) > 1e-4  # the criteria get different answers: the comparison can fail


@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["yes", "no"])
def test_planted_grader_verdicts_follow_its_yes_and_no(planted, rubric, det, direction):
    """The planted model as grader, steered on every position towards " Yes" (or " No")."""
    model, tokenizer, cell, yes = planted
    with steer(model, cell.layer, direction * yes, 1000.0, Positions.onward(0)):
        graded = grade_responses(model, tokenizer, RESPONSES, rubric, det.question, batch_size=4)
    verdict = direction > 0
    assert [graded[0][c] for c in CRITERIA] == [verdict] * 4
    assert graded[0]["detected_and_identified"] is verdict
    assert [graded[1][c] for c in CRITERIA] == [verdict, verdict, None, None]
    assert graded[0]["rubric_sha256"] == rubric.sha256 and not graded[0]["truncated"]


def test_a_grading_prompt_longer_than_the_context_is_refused(llama, rubric, det, monkeypatch):
    model, tokenizer = llama
    monkeypatch.setattr(model.config, "max_position_embeddings", 64)
    with pytest.raises(InputError, match=r"more than its context of 64; lower max_response_tokens \(now 256\)"):
        grade_responses(model, tokenizer, RESPONSES, rubric, det.question)


# --- localization records -----------------------------------------------------------------------

def test_localization_records_are_complete_and_reproducible(llama, loc, tmp_path):
    model, tokenizer = llama
    cell = random_cell(model, tokenizer, tmp_path)
    run = dict(sentences=SENTENCES, n_trials=4, n_sentences=3, batch_size=16)
    records = run_localization(model, tokenizer, cell, loc, seed=1, **run)
    assert len(records) == 4 * len(loc.questions) * (2 * 3 + 1)
    assert records == run_localization(model, tokenizer, cell, loc, seed=1, **run)
    other = run_localization(model, tokenizer, cell, loc, seed=2, **run)
    assert [r["sentence_ids"] for r in records] != [r["sentence_ids"] for r in other]
    full = run_localization(model, tokenizer, cell, loc, seed=1, share_prefix=False, **run)
    np.testing.assert_allclose([r["answer_probs"] for r in records], [r["answer_probs"] for r in full], atol=1e-5)
    assert [r["prediction"] for r in records] == [r["prediction"] for r in full]
    for record in records:
        assert record.keys() >= CELL_COLUMNS | TRIAL_COLUMNS | {"trial", "sentence_ids", "answer_probs",
                                                                "injected_position"}
        assert sum(record["answer_probs"]) == pytest.approx(1) and record["prediction"] in (1, 2, 3)
        assert record["prediction"] == 1 + int(np.argmax(record["answer_probs"]))
        assert record["introspection"] == (record["question"] == "locate")
        assert record["concept"] == ("Dust", "Snow", "Bread")[record["trial"] % 3]
        if record["kind"] == "control":
            assert record["injected_position"] is None and record["correct"] is None
            assert record["strength_absolute"] == 0
        else:
            assert record["correct"] == (record["prediction"] == record["injected_position"])
    path = tmp_path / "localization.json"
    write_records(path, records, vectors=cell.provenance(), texts=provenance(loc), settings=run | {"sentences": None})
    table = read_records([path])
    assert len(table) == len(records) and table["strength_relative"].eq(cell.strength).all()
    header = json.loads(path.read_text())
    assert header["texts"] == {"path": str(LOCALIZATION), "version": 2, "sha256": loc.sha256}
    assert header["vectors"]["layer"] == 2 and header["n_records"] == len(records) and header["versions"]["torch"]


def test_bad_cells_are_refused(llama, loc, tmp_path):
    model, tokenizer = llama
    cell = random_cell(model, tokenizer, tmp_path)
    with pytest.raises(InputError, match=rf"{cell.vector_path}: attribute 'model' is 'tiny', not model 'other'"):
        open_cell(cell.vector_path, "other", True, 1.0, 1.0)
    with pytest.raises(InputError, match=rf"{cell.vector_path}: no vector for 'Milk'"):
        run_detection_logits(model, tokenizer, cell, load_detection_texts(DETECTION),
                             concepts=["Milk"])
    with pytest.raises(InputError, match=r"detection.yaml: key 'question \+ paraphrases' holds 13 variants, fewer "
                                         r"than injection.n_variants = 14"):
        run_forced_identification(model, tokenizer, cell, load_detection_texts(DETECTION), n_variants=14)
    bare = open_cell(vector_file(tmp_path / "bare.h5", ["Dust"], np.ones((1, model.config.hidden_size)), 2),
                     "tiny", True, 1.0, 1.0)
    with pytest.raises(InputError, match="bare.h5: no baseline_vectors .* rerun rule concept_vectors"):
        run_detection_logits(model, tokenizer, bare, load_detection_texts(DETECTION), n_variants=1)
    with pytest.raises(InputError, match=r"no question 'where'"):
        run_localization(model, tokenizer, cell, loc, SENTENCES, 1, questions=["where"])
    with pytest.raises(InputError, match="2..9 sentences"):
        run_localization(model, tokenizer, cell, loc, SENTENCES, 1, n_sentences=10)
    zero = vector_file(tmp_path / "zero.h5", ["Dust"], np.zeros((1, model.config.hidden_size)), 2)
    with pytest.raises(InputError, match="Dust have no direction"):
        open_cell(zero, "tiny", True, 1.0, 1.0)


# --- thought vs text, prefill intent, intentional control ---------------------------------------

def test_continuations_in_a_padded_batch_equal_a_direct_forward(llama):
    model, tokenizer = llama
    prompts = [tokenizer("Repeat the line below.\n\nThe bus was late.")["input_ids"],
               tokenizer("Say it: hi there")["input_ids"]]
    answers = [tokenizer(" The bus was late.", add_special_tokens=False)["input_ids"],
               tokenizer(" hi there", add_special_tokens=False)["input_ids"]]
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(4)).numpy()
    trials = [Trial(tuple(prompts[0] + answers[0]), 5, 9, vector, 20.0), Trial(tuple(prompts[1] + answers[1]))]
    scored = read_continuations(model, 2, trials, [len(a) for a in answers], batch_size=2)
    for trial, answer, (scores, hits) in zip(trials, answers, scored):
        where = Positions.span(trial.start, trial.end)
        with torch.no_grad(), steer(model, 2, vector, trial.strength if trial.vector is not None else 0.0, where):
            log_probs = torch.log_softmax(model(input_ids=torch.tensor([trial.ids])).logits[0], -1)
        predicted = log_probs[-len(answer) - 1 : -1]
        expected = predicted[torch.arange(len(answer)), answer].numpy()
        np.testing.assert_allclose(scores, expected, atol=1e-5)
        assert hits.tolist() == (predicted.argmax(-1) == torch.tensor(answer)).tolist()
    plain = read_continuations(model, 2, [Trial(trials[0].ids)], [len(answers[0])], batch_size=1)[0][0]
    assert not np.allclose(scored[0][0], plain, atol=1e-3)


def test_thought_vs_text_steers_the_sentence_only(llama, thought, tmp_path):
    """Both questions steer exactly the tokens of the shown sentence; the repeated sentence (the
    teacher-forced answer) and everything else are left alone."""
    model, tokenizer = llama
    cell = random_cell(model, tokenizer, tmp_path)
    zero = open_cell(cell.vector_path, "tiny", True, 0.0, cell.mean_norm)
    run = dict(sentences=SENTENCES, n_trials=2, seed=4, batch_size=64)
    with recording(model, 2) as calls:
        records = run_thought_vs_text(model, tokenizer, cell, thought, **run)
    with recording(model, 2) as plain_calls:
        run_thought_vs_text(model, tokenizer, zero, thought, **run)
    assert [(r["question"], r["kind"], r["trial"]) for r in records] == [
        (q, k, t) for q in ("thought", "text") for t in (0, 1) for k in ("injected", "control")]
    for call, plain, rows in zip(calls, plain_calls, (records[:4], records[4:])):
        for row, record in enumerate(rows):
            difference = (call["state"][row] - plain["state"][row]).abs().sum(-1)
            steered = difference.nonzero().flatten().tolist()
            sentence = SENTENCES[record["sentence_id"]]
            if record["kind"] == "control":
                assert steered == []
                continue
            assert tokenizer.decode(call["ids"][row, steered]).strip() == sentence
            if record["question"] == "text":
                assert tokenizer.decode(call["ids"][row, -record["n_tokens"]:]).strip() == sentence
                assert steered[-1] < call["ids"].shape[1] - record["n_tokens"]
    for record in records:
        assert record["concept"] == ("Dust", "Snow", "Bread")[record["trial"]]
        if record["question"] == "thought":
            assert record.keys() >= {"rank", "top1", "prediction", "candidate_mass"}
        else:
            assert record["exact"] == (record["token_accuracy"] == 1.0) and record["mean_logprob"] < 0


def test_prefill_intent_prompts_and_unsteered_controls(llama, thought, tmp_path):
    model, tokenizer = llama
    cell = random_cell(model, tokenizer, tmp_path)
    records = run_prefill_intent(model, tokenizer, cell, thought, SENTENCES, n_trials=2, seed=1)
    assert [(r["kind"], r["concept"], r["injected_concept"]) for r in records] == [
        ("injected", "Dust", "Dust"), ("mismatched", "Dust", "Snow"), ("control", "Dust", None),
        ("injected", "Snow", "Snow"), ("mismatched", "Snow", "Bread"), ("control", "Snow", None)]
    sentence = SENTENCES[records[0]["sentence_id"]]
    messages = [f"{thought.word_question}\n\n{sentence}", "Dust", thought.follow_up]
    ids, [span] = inputs.conversation_ids(tokenizer, messages, True, [sentence], "Answer:", thought.path)
    text = tokenizer.decode(ids)
    assert f"{sentence}<|im_end|>\n<|im_start|>assistant\nDust<|im_end|>\n<|im_start|>user\n{thought.follow_up}" in text
    assert tokenizer.decode(ids[span[0]:span[1]]).strip() == sentence and text.endswith("assistant\nAnswer:")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    options = torch.softmax(logits[[token_id(tokenizer, "ĠYes"), token_id(tokenizer, "ĠNo")]], -1)
    assert records[2]["p_yes"] == pytest.approx(float(options[0]), abs=1e-6)
    assert records[0]["p_yes"] != pytest.approx(records[2]["p_yes"], abs=1e-6)
    with pytest.raises(InputError, match="two concepts or more"):
        run_prefill_intent(model, tokenizer, cell, thought, SENTENCES, 1, concepts=["Dust"])


def test_intentional_control_cosines(llama, thought, tmp_path):
    """Cosines equal a direct computation on each sequence alone; with the concept vector planted
    (steered in, many times the residual norm) on every position, they approach 1."""
    model, tokenizer = llama
    cell = random_cell(model, tokenizer, tmp_path)
    records = run_intentional_control(model, tokenizer, cell, thought, SENTENCES, n_trials=2, seed=0, batch_size=4)
    assert [(r["trial"], r["question"]) for r in records] == [(t, i) for t in (0, 1) for i in INSTRUCTIONS]
    record = records[1]
    sentence = SENTENCES[record["sentence_id"]]
    message = thought.instructions["dont_think"].format(sentence=sentence, word="dust")
    assert message.startswith(f'Write "{sentence}" Don\'t think about dust')
    ids, _ = inputs.conversation_ids(tokenizer, [message], True, [], "", thought.path)
    answer = tokenizer(sentence, add_special_tokens=False)["input_ids"]
    with capture_residual(model, [2]) as captured, torch.no_grad():
        model.get_decoder()(input_ids=torch.tensor([ids + answer]))
    states = captured[2][0, -len(answer):].double()
    vector = torch.from_numpy(cell.vectors.vector("Dust")).double()
    expected = torch.nn.functional.cosine_similarity(states, vector[None], dim=-1).mean()
    assert record["cosine"] == pytest.approx(float(expected), abs=1e-6) and record["n_tokens"] == len(answer)
    with steer(model, 2, vector.float(), 1000.0, Positions.onward(0)):
        planted = run_intentional_control(model, tokenizer, cell, thought, SENTENCES, 1, concepts=["Dust"])
    assert all(r["cosine"] > 0.99 for r in planted) and all(abs(r["cosine"]) < 0.9 for r in records)


# --- the real embedded model --------------------------------------------------------------------

@pytest.mark.embedded
def test_embedded_smollm2_forced_identification(smollm2_manifest, tmp_path, det):
    """SmolLM2-135M-Instruct with mean-subtraction vectors at layer 20: injecting a concept at
    2x the residual norm makes its word the top candidate after the forced prefill (measured: all
    three; unsteered, ranks 3, 2, 1), and P(yes) is a valid probability (unsteered, yes/no hold most of the mass)."""
    from llm_introspection.models import load_model, load_tokenizer

    model, tokenizer = load_model(smollm2_manifest, "cpu", torch.float32), load_tokenizer(smollm2_manifest)
    concepts, baseline, layer = ["Dust", "Trumpets", "Origami"], ["Desks", "Jackets", "Chairs", "Clouds", "Rivers"], 20
    requests = concept_prompt_ids(concepts + baseline, "Tell me about {word}", tokenizer, "instruct", "native", "m")
    vectors, baseline = mean_subtraction_vectors(model, [layer], requests[:3], requests[3:], batch_size=8)
    norm = mean_residual_norm(model, layer, sentence_ids(SENTENCES[:8], tokenizer), batch_size=8)
    path = vector_file(tmp_path / "v.h5", concepts, vectors[:, 0], layer, "smollm2", baseline[:, 0])
    cell = open_cell(path, "smollm2", True, 2.0, norm)
    records = run_forced_identification(model, tokenizer, cell, det, n_variants=1)
    rank = {(r["question"], r["kind"], r["concept"]): r["rank"] for r in records}
    injected = [rank[("forced_identification", "injected", c)] for c in concepts]
    assert sum(r == 1 for r in injected) >= 2 and np.mean(injected) < 2, rank  # control ranks average 2
    detection = run_detection_logits(model, tokenizer, cell, det, n_variants=2, concepts=["Dust"])
    assert all(0 < r["p_yes"] < 1 for r in detection)
    controls = [r for r in detection if r["kind"] == "control"]
    assert len(controls) == 4 and all(r["option_mass"] > 0.1 for r in controls)  # unsteered, it answers yes/no
