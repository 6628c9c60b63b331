"""Concept injection experiments, one cell at a time, as per-trial records: detection, forced
identification, thought vs text, prefill intent and intentional control (Lindsey 2025), and
localization (after Godet).

A cell is one model x one experiment x one (layer, strength): `open_cell` reads the concept
vectors of one layer, and each `run_*` function serves every trial of its experiment from one
loaded model, in left-padded batches whose rows are steered each as their trial says (a control
row adds a zero vector at strength 0, so it runs unsteered in the same batch). Strength is
relative: every injected vector gets norm strength x the layer's mean residual norm
(steering.relative_strength); the records carry it and the absolute multiplier. A record's kind
says what was injected: 'injected' (the trial's concept vector), 'random' (a norm-matched random
vector), 'mismatched' (another concept's vector) or 'control' (nothing).

Readouts never generate: one forward pass per trial gives the next-token log-probabilities of the
answer options after a prefilled answer start (or of a teacher-forced answer's tokens); the
full-vocabulary logits live for that batch only. Answers are the options' probabilities
renormalised among themselves, so there is always one; the options' mass under the full softmax
is kept as a diagnostic (low mass: the model wanted to say something else).

Prompts: instruct models in their native frame get the chat template (prompts.uses_chat_template),
other models a plain transcript ("User: ...", "Assistant: ..."). Injection positions are found
from the tokenizer's character offsets of the rendered text (steering.token_span).
"""

import hashlib
import string
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .concepts import VectorSet, load_vectors, matched_random_vectors
from .config import read_yaml, validate
from .errors import InputError
from .judge import (
    RubricText, answer_frame, encode, framed_ids, judge_name, next_token_log_probs, option_log_probs, rubric_text_fields,
    truncate_completion,
)
from .sampling import eos_token_ids, left_pad, sample_completions
from .steering import Positions, relative_strength, steer, token_span
from .storage import versions, write_json
from .tracing import capture_residual

CRITERIA = ("coherent", "affirmative", "identifies", "detection_before_word")
CONTROL_CRITERIA = ("coherent", "affirmative")  # no concept was injected: nothing to identify
_BASE_LABELS = {"user": "User:", "assistant": "Assistant:"}
# Any id: padded positions are masked out of attention, and a sampled row's tokens after its end are cut.
_PAD_ID = 0


# --- resources ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class AnswerSpec:
    """Options read after a prefill (the fields judge.answer_frame reads)."""

    path: Path
    prefill: str
    separator: str
    options: tuple


@dataclass(frozen=True)
class DetectionTexts:
    path: Path
    version: int
    sha256: str
    preamble: str
    acknowledgement: str
    opening: str
    question: str
    answer: AnswerSpec  # prefill as written; the options yes, no
    forced_prefill: str


@dataclass(frozen=True)
class Question:
    question: str
    prefill: str


@dataclass(frozen=True)
class LocalizationTexts:
    path: Path
    version: int
    sha256: str
    n_sentences: int
    template: str
    sentence_format: str
    separator: str
    introspection: str
    questions: dict  # name -> Question, in file order


@dataclass(frozen=True)
class GradingRubric(RubricText):
    """A grading rubric: RubricText (options: yes, no) and one question per criterion."""

    criteria: dict  # name -> question, in CRITERIA order


@dataclass(frozen=True)
class ThoughtTexts:
    path: Path
    version: int
    sha256: str
    thought_question: str
    thought_prefill: str
    repeat_question: str
    word_question: str
    follow_up: str
    intent_answer: AnswerSpec  # options: intended, accident
    instructions: dict  # think, dont_think, neutral -> template with {sentence} (and {word})


INSTRUCTIONS = ("think", "dont_think", "neutral")


def _fields(template):
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def _check_fields(path, key, template, allowed, required, once=False):
    fields = _fields(template)
    problems = [f"unknown field {{{f}}}" for f in sorted(set(fields) - set(allowed))]
    problems += [f"no {{{f}}}" for f in sorted(set(required) - set(fields))]
    if once:
        problems += [f"{{{f}}} more than once" for f in sorted(set(fields)) if fields.count(f) > 1]
    if problems:
        raise InputError(f"{path}: key '{key}': {', '.join(problems)}")


def _read(path, schema_path, what):
    path = Path(path)
    data = validate(read_yaml(path), schema_path, f"{what} {path}")
    return path, data, hashlib.sha256(path.read_bytes()).hexdigest()


def provenance(texts):
    """What a record file says about the texts it was made with."""
    return {"path": str(texts.path), "version": texts.version, "sha256": texts.sha256}


def load_detection_texts(path, schema_path):
    """The detection trial texts, validated."""
    path, data, sha256 = _read(path, schema_path, "detection file")
    answer = data["answer"]
    return DetectionTexts(
        path, data["version"], sha256, data["preamble"], data["acknowledgement"], data["opening"],
        data["question"], AnswerSpec(path, answer["prefill"], answer["separator"], tuple(answer["options"])),
        data["forced_identification"]["prefill"],
    )


def load_localization_texts(path, schema_path):
    """The localization trial texts, validated (template fields, the introspection question named)."""
    path, data, sha256 = _read(path, schema_path, "localization file")
    _check_fields(path, "template", data["template"], {"n", "sentences", "question"}, {"sentences", "question"},
                  once=True)
    _check_fields(path, "sentence_format", data["sentence_format"], {"number", "sentence"}, {"number", "sentence"},
                  once=True)
    if data["introspection"] not in data["questions"]:
        raise InputError(f"{path}: key 'introspection': {data['introspection']!r} is not one of the "
                         f"questions ({', '.join(data['questions'])})")
    return LocalizationTexts(
        path, data["version"], sha256, data["n_sentences"], data["template"], data["sentence_format"],
        data["separator"], data["introspection"],
        {name: Question(**question) for name, question in data["questions"].items()},
    )


def load_thought_texts(path, schema_path):
    """The thought-vs-text, prefill-intent and intentional-control texts, validated."""
    path, data, sha256 = _read(path, schema_path, "thought and intent file")
    instructions = data["intentional_control"]
    for name in INSTRUCTIONS:
        _check_fields(path, f"intentional_control.{name}", instructions[name], {"sentence", "word"},
                      {"sentence"} if name == "neutral" else {"sentence", "word"})
    thought, intent = data["thought_vs_text"], data["prefill_intent"]
    answer = intent["answer"]
    return ThoughtTexts(
        path, data["version"], sha256, thought["thought_question"], thought["thought_prefill"],
        thought["repeat_question"], intent["word_question"], intent["follow_up"],
        AnswerSpec(path, answer["prefill"], answer["separator"], tuple(answer["options"])),
        {name: instructions[name] for name in INSTRUCTIONS},
    )


def load_grading_rubric(path, schema_path):
    """The grading rubric, validated (template fields; {word} in the criteria that name the concept)."""
    path, data, sha256 = _read(path, schema_path, "grading rubric")
    _check_fields(path, "user_template", data["user_template"],
                  {"instructions", "question", "response", "criterion", "options"}, {"response", "criterion"})
    for name, question in data["criteria"].items():
        needs_word = name not in CONTROL_CRITERIA
        _check_fields(path, f"criteria.{name}", question, {"word"} if needs_word else set(),
                      {"word"} if needs_word else set())
    return GradingRubric(**rubric_text_fields(path, data, sha256),
                         criteria={name: data["criteria"][name] for name in CRITERIA})


# --- cells --------------------------------------------------------------------------------------

def concept_word(name):
    """The word a concept vector stands for, as the model would write it inside a sentence."""
    return name.replace("_", " ").lower()


@dataclass(frozen=True)
class Cell:
    """The vectors of one (model, layer) and the strength they are injected at in this cell."""

    model: str
    chat: bool  # render through the chat template (prompts.uses_chat_template)
    vectors: VectorSet
    vector_path: Path
    strength: float  # relative: the injected vector's norm is strength x mean_norm
    mean_norm: float  # the layer's mean residual norm (concepts.mean_residual_norm)

    @property
    def layer(self):
        return int(self.vectors.attrs["layer"])

    def concepts(self, names=None):
        """The named concepts (all of the file's when None), each checked to be in the file."""
        if names is None:
            return self.vectors.names
        unknown = [n for n in names if n not in self.vectors.names]
        if unknown:
            raise InputError(f"{self.vector_path}: no vector for {', '.join(map(repr, unknown))}")
        return tuple(names)

    def injection(self, name):
        """The vector of `name` and the absolute strength that gives it the cell's norm."""
        vector = self.vectors.vector(name)
        return vector, relative_strength(self.strength, vector, self.mean_norm)

    def columns(self, experiment):
        """The columns every record of this cell carries."""
        return {"experiment": experiment, "model": self.model, "layer": self.layer,
                "vector_method": self.vectors.attrs["method"], "strength_relative": self.strength,
                "mean_norm": self.mean_norm}

    def provenance(self):
        """What a record file says about the vectors."""
        keep = {k: v for k, v in self.vectors.attrs.items() if k not in ("names", "description")}
        return {"path": str(self.vector_path), **keep}


def open_cell(vector_path, model, chat, strength, mean_norm):
    """Read the concept vector file of one (model, layer) for a cell at relative `strength`;
    InputError names the file when it was made for another model or holds a zero vector."""
    vectors = load_vectors(vector_path)
    saved = vectors.attrs["model"]  # a name or a model record
    if (saved.get("name") if isinstance(saved, dict) else saved) != model:
        raise InputError(f"{vector_path}: attribute 'model' is {saved!r}, not model {model!r}")
    zero = [n for n, v in zip(vectors.names, vectors.vectors) if not np.linalg.norm(v) > 0]
    if zero:
        raise InputError(f"{vector_path}: the vectors of {', '.join(zero)} have no direction (norm 0)")
    if not strength >= 0 or not mean_norm > 0:
        raise ValueError(f"strength must be >= 0 and mean_norm > 0, not {strength!r} and {mean_norm!r}")
    return Cell(model, chat, vectors, Path(vector_path), float(strength), float(mean_norm))


# --- prompts ------------------------------------------------------------------------------------

def render_conversation(tokenizer, messages, chat):
    """The text of a conversation (user and assistant messages alternating, the user's first and
    last) up to where the assistant's answer starts."""
    roles = [("user", "assistant")[i % 2] for i in range(len(messages))]
    if not chat:
        turns = [f"{_BASE_LABELS[role]} {text}" for role, text in zip(roles, messages)]
        return "\n\n".join(turns + [_BASE_LABELS["assistant"]])
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(f"tokenizer {judge_name(tokenizer)} has no chat template: render trials with chat=False")
    return tokenizer.apply_chat_template([{"role": r, "content": t} for r, t in zip(roles, messages)],
                                         tokenize=False, add_generation_prompt=True)


def answer_start(prefill, chat):
    """A prefill as it follows the rendered prompt: after a space in the plain transcript."""
    return prefill if chat else " " + prefill


def _encode_marked(tokenizer, text, chat, marks, path):
    """Token ids of a rendered prompt (a chat text holds its special tokens; a plain transcript
    gets the tokenizer's, as in prompts.render_prompt) and the token span of each marked string,
    found after the previous one; InputError when the rendered text lacks one (a chat template
    that rewrites messages)."""
    encoded = tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
    spans, at = [], 0
    for mark in marks:
        at = text.find(mark, at)
        if at < 0:
            raise InputError(f"{path}: {mark!r} is not in the prompt as rendered for tokenizer {judge_name(tokenizer)}")
        spans.append(token_span(encoded["offset_mapping"], at, at + len(mark)))
        at += len(mark)
    return list(encoded["input_ids"]), spans


def conversation_ids(tokenizer, messages, chat, marks, prefill, path):
    """Token ids of a conversation with `prefill` (as answer_start gives it) after it, and the
    token span [start, end) of each marked string, in order of appearance."""
    head = render_conversation(tokenizer, messages, chat)
    ids, spans = _encode_marked(tokenizer, head, chat, marks, path)
    return ids + encode(tokenizer, prefill), spans


def detection_prompt(tokenizer, texts, chat, prefill=""):
    """Token ids of a detection trial, with `prefill` (as answer_start gives it) after the
    prompt, and the position of the question's first token, where injection starts."""
    messages = [texts.preamble, texts.acknowledgement, f"{texts.opening}\n\n{texts.question}"]
    ids, [(start, _)] = conversation_ids(tokenizer, messages, chat, [texts.question], prefill, texts.path)
    return ids, start


def localization_prompt(tokenizer, texts, sentences, question, chat, prefill):
    """Token ids of a localization trial (`prefill` as answer_start gives it, after the prompt) and
    the token span [start, end) of each sentence (its words, not its label)."""
    lines = [texts.sentence_format.format(number=i + 1, sentence=s) for i, s in enumerate(sentences)]
    message = texts.template.format(n=len(sentences), sentences="\n".join(lines),
                                    question=texts.questions[question].question)
    return conversation_ids(tokenizer, [message], chat, sentences, prefill, texts.path)


# --- steered readouts and sampling --------------------------------------------------------------

@dataclass(frozen=True)
class Trial:
    """One model input and its injection: strength x vector added to the cell's hidden state on the
    token positions [start, end), end None = onward, generated tokens included. No vector: a control
    (a zero vector at strength 0 is added, which leaves every state as it is)."""

    ids: tuple
    start: int = 0
    end: int | None = 0
    vector: np.ndarray | None = None
    strength: float = 0.0


def _steering(model, layer, trials):
    """The steer context for one batch of trials (their ends all ints, or all None)."""
    width = model.get_input_embeddings().embedding_dim
    vectors = np.stack([np.zeros(width, np.float32) if t.vector is None else np.asarray(t.vector, np.float32)
                        for t in trials])
    strengths = [0.0 if t.vector is None else t.strength for t in trials]
    ends = [t.end for t in trials]
    where = Positions([t.start for t in trials], None if ends[0] is None else ends)
    return steer(model, layer, vectors, strengths, where)


@torch.inference_mode()
def read_options(model, layer, trials, option_ids, batch_size):
    """(len(trials), len(option_ids)) float64: log-probabilities (full softmax) of the option tokens
    as the next token after each trial's ids, every trial steered at hidden state `layer` as it says."""
    out = np.empty((len(trials), len(option_ids)))
    for begin in range(0, len(trials), batch_size):
        batch = trials[begin : begin + batch_size]
        with _steering(model, layer, batch):
            out[begin : begin + len(batch)] = next_token_log_probs(model, [t.ids for t in batch], option_ids, _PAD_ID)
    return out


def option_answers(log_probs):
    """From option log-probabilities (n, k): the probabilities renormalised over the options, the
    index of the most probable option and the options' total mass under the full softmax."""
    log_probs = np.asarray(log_probs, dtype=np.float64)
    mass = np.exp(log_probs).sum(-1)
    shifted = np.exp(log_probs - log_probs.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True), log_probs.argmax(-1), mass


def sample_trials(model, layer, trials, seeds, params, eos_ids, batch_size):
    """One sampled completion (sampling.Completion) per trial and seed, each trial steered as it
    says (ends None: injection runs on through the generated tokens)."""
    completions = []
    for begin in range(0, len(trials), batch_size):
        batch = trials[begin : begin + batch_size]
        with _steering(model, layer, batch):
            completions += sample_completions(model, [list(t.ids) for t in batch], seeds[begin : begin + batch_size],
                                              params, eos_ids, _PAD_ID, len(batch), top_k=1)
    return completions


@torch.inference_mode()
def read_continuations(model, layer, trials, lengths, batch_size):
    """Per trial, for each of its last `length` tokens (a teacher-forced answer): the token's
    log-probability given what precedes it and whether it is the most probable token, every trial
    steered as it says. A list of ((length,) float64, (length,) bool) pairs."""
    out = []
    for begin in range(0, len(trials), batch_size):
        batch, sizes = trials[begin : begin + batch_size], lengths[begin : begin + batch_size]
        ids, mask, positions = left_pad([t.ids for t in batch], _PAD_ID, model.device)
        with _steering(model, layer, batch):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                           logits_to_keep=max(sizes) + 1).logits.float()
        log_probs = torch.log_softmax(logits, dim=-1)  # the full vocabulary, for this batch only
        for row, size in enumerate(sizes):
            targets, scores = ids[row, -size:], log_probs[row, -size - 1 : -1]
            out.append((scores.gather(-1, targets[:, None])[:, 0].double().cpu().numpy(),
                        (scores.argmax(-1) == targets).cpu().numpy()))
        del logits, log_probs
    return out


@torch.inference_mode()
def continuation_cosines(model, layer, sequences, lengths, vectors, batch_size):
    """(len(sequences),) float64: the mean over each sequence's last `length` tokens of the cosine
    similarity between hidden state `layer` and the sequence's vector (unsteered)."""
    out = np.empty(len(sequences))
    for begin in range(0, len(sequences), batch_size):
        batch, sizes = sequences[begin : begin + batch_size], lengths[begin : begin + batch_size]
        ids, mask, positions = left_pad(batch, _PAD_ID, model.device)
        with capture_residual(model, [layer]) as captured:
            model.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        states = captured[layer].double()
        directions = torch.as_tensor(np.asarray(vectors[begin : begin + batch_size]), dtype=torch.float64,
                                     device=states.device)
        for row, size in enumerate(sizes):
            cosines = torch.nn.functional.cosine_similarity(states[row, -size:], directions[row][None], dim=-1)
            out[begin + row] = float(cosines.mean())
    return out


# --- experiments --------------------------------------------------------------------------------

def _option_frame(tokenizer, spec, chat):
    """judge.answer_frame for the options of `spec` after its prefill as it follows a rendered prompt."""
    return answer_frame(tokenizer, replace(spec, prefill=answer_start(spec.prefill, chat)))


def run_detection_logits(model, tokenizer, cell, texts, batch_size=8, concepts=None):
    """Detection by the logit metric: P(yes) against P(no) as the next token after the prefilled
    answer start, for one injected trial per concept (from the question's first token on, prefill
    included) and one control trial (nothing injected: the same input for every concept, so it
    runs once). Records: kind, concept (None for the control), question, strength_absolute, p_yes,
    p_no (renormalised over the two), option_mass, prediction ('yes' when p_yes > p_no, else 'no')
    and correct (yes on an injected trial, no on the control)."""
    frame = _option_frame(tokenizer, texts.answer, cell.chat)
    ids, start = detection_prompt(tokenizer, texts, cell.chat, frame.prefill)
    names = cell.concepts(concepts)
    trials = [Trial(tuple(ids), start, len(ids), *cell.injection(n)) for n in names] + [Trial(tuple(ids))]
    probs, _, mass = option_answers(read_options(model, cell.layer, trials, frame.option_ids, batch_size))
    records = []
    for row, (name, trial) in enumerate(zip([*names, None], trials)):
        kind, says_yes = ("control" if name is None else "injected"), bool(probs[row, 0] > probs[row, 1])
        records.append(cell.columns("detection_logits") | {
            "kind": kind, "concept": name, "question": "detect", "strength_absolute": float(trial.strength),
            "p_yes": float(probs[row, 0]), "p_no": float(probs[row, 1]), "option_mass": float(mass[row]),
            "prediction": "yes" if says_yes else "no", "correct": says_yes == (kind == "injected"),
        })
    return records


def run_detection_responses(model, tokenizer, cell, texts, params, samples=1, seed=0, batch_size=8, concepts=None):
    """Sampled answers to the detection question (sampling.SamplingParams `params`): `samples`
    injected trials per concept (from the question's first token on, through every generated
    token) and as many control trials, so half of the trials are injected, as the preamble says.
    Injected sample s of every concept has seed seed + s; control trial j has seed seed + j.
    Records: kind, concept (None for controls), question, sample, seed, strength_absolute, text,
    token_ids, n_tokens, stop_reason."""
    ids, start = detection_prompt(tokenizer, texts, cell.chat)
    names = cell.concepts(concepts)
    injected = [(n, s) for n in names for s in range(samples)]
    rows = injected + [(None, j) for j in range(len(injected))]
    trials = [Trial(tuple(ids), start, None, *cell.injection(n)) if n is not None else Trial(tuple(ids), 0, None)
              for n, _ in rows]
    seeds = [seed + s for _, s in rows]
    completions = sample_trials(model, cell.layer, trials, seeds, params, eos_token_ids(model, tokenizer), batch_size)
    return [cell.columns("detection_responses") | {
        "kind": "control" if name is None else "injected", "concept": name, "question": "detect", "sample": s,
        "seed": seed_, "strength_absolute": float(trial.strength),
        "text": tokenizer.decode(c.token_ids, skip_special_tokens=True), "token_ids": [int(t) for t in c.token_ids],
        "n_tokens": len(c.token_ids), "stop_reason": c.stop_reason,
    } for (name, s), seed_, trial, c in zip(rows, seeds, trials, completions)]


def first_token_ids(tokenizer, prefill, words):
    """Per word, the id of the first token of " word" right after `prefill`; InputError when the
    prefill's own tokens change."""
    base = encode(tokenizer, prefill)
    ids = []
    for word in words:
        full = encode(tokenizer, f"{prefill} {word}")
        if full[: len(base)] != base or len(full) == len(base):
            raise InputError(f"tokenizer {judge_name(tokenizer)}: {word!r} after the prefill {prefill!r} "
                             "does not start a token of its own")
        ids.append(full[len(base)])
    return ids


def run_forced_identification(model, tokenizer, cell, texts, batch_size=8, concepts=None):
    """Forced identification: after the prefilled claim of detection, the first token of
    " word" (concept_word, lower case) of every concept of the vector file is a candidate. One
    injected trial per concept (from the question on, prefill included) and one control trial
    (nothing injected), which gives every concept its control record. Records: kind, concept,
    question, strength_absolute, logprob (the concept's first token, full softmax), rank among the
    candidates (1 + the candidates at least as probable: a first token shared with another concept
    never ranks first), top1, prediction (the most probable candidate), correct (= top1),
    candidate_mass (the distinct candidate tokens' total probability), n_candidates,
    shared_first_token."""
    candidates = cell.vectors.names
    prefill = answer_start(texts.forced_prefill, cell.chat)
    option_ids = first_token_ids(tokenizer, prefill, [concept_word(n) for n in candidates])
    ids, start = detection_prompt(tokenizer, texts, cell.chat, prefill)
    names = cell.concepts(concepts)
    trials = [Trial(tuple(ids), start, len(ids), *cell.injection(n)) for n in names] + [Trial(tuple(ids))]
    log_probs = read_options(model, cell.layer, trials, option_ids, batch_size)
    rows = [("injected", r, n) for r, n in enumerate(names)] + [("control", len(names), n) for n in names]
    return [cell.columns("forced_identification") | {
        "kind": kind, "concept": name, "question": "forced_identification",
        "strength_absolute": float(trials[row].strength),
    } | _ranking(log_probs[row], name, candidates, option_ids) for kind, row, name in rows]


def _ranking(log_probs, name, candidates, option_ids):
    """The record fields of one candidate readout (see run_forced_identification)."""
    own = candidates.index(name)
    rank = 1 + int((np.delete(log_probs, own) >= log_probs[own]).sum())
    distinct = [option_ids.index(i) for i in dict.fromkeys(option_ids)]
    return {"logprob": float(log_probs[own]), "rank": rank, "top1": rank == 1,
            "prediction": candidates[int(log_probs.argmax())], "correct": rank == 1,
            "candidate_mass": float(np.exp(log_probs[distinct]).sum()), "n_candidates": len(candidates),
            "shared_first_token": option_ids.count(option_ids[own]) > 1}


def run_localization(model, tokenizer, cell, texts, sentences, n_trials, seed=0, batch_size=8, n_sentences=None,
                     concepts=None, questions=None):
    """Localization: trial t shows n_sentences sentences drawn from the pool `sentences` (seeded)
    and injects the vector of concept t mod len(concepts) on the tokens of sentence k, for every k
    and every question; the same with a random vector of the same norm (seeded by (seed, t)); and
    once per question with nothing injected. The answer is read from the digits 1..n after the
    question's prefill. Records: trial, sentence_ids (indices into the pool), n_sentences,
    question, introspection (the question is the introspective one), kind, concept (the concept
    vector, or the one a random vector's norm matches), injected_position (1..n; None for
    controls), strength_absolute, answer_probs (renormalised over the digits), option_mass,
    prediction (1..n), correct (None for controls)."""
    n = n_sentences or texts.n_sentences
    if not 2 <= n <= 9 or n > len(sentences):
        raise InputError(f"localization needs 2..9 sentences per trial and at most the pool's "
                         f"{len(sentences)}, not {n}")
    unknown = [q for q in questions or () if q not in texts.questions]
    if unknown:
        raise InputError(f"{texts.path}: key 'questions': no question {', '.join(map(repr, unknown))}")
    names = cell.concepts(concepts)
    digits = tuple(str(d) for d in range(1, n + 1))
    frames = {q: _option_frame(tokenizer, AnswerSpec(texts.path, texts.questions[q].prefill, texts.separator, digits),
                               cell.chat) for q in questions or texts.questions}
    rng = np.random.default_rng(seed)
    rows = {question: [] for question in frames}  # per question: (record fields, trial), read in full batches
    for t in range(n_trials):
        picks = [int(i) for i in rng.choice(len(sentences), size=n, replace=False)]
        name = names[t % len(names)]
        vector, strength = cell.injection(name)
        noise = matched_random_vectors(vector[None], seed=[seed, t])[0]
        noise_strength = relative_strength(cell.strength, noise, cell.mean_norm)
        for question, frame in frames.items():
            ids, spans = localization_prompt(tokenizer, texts, [sentences[i] for i in picks], question, cell.chat,
                                             frame.prefill)
            fields = cell.columns("localization") | {
                "trial": t, "sentence_ids": picks, "n_sentences": n, "question": question,
                "introspection": question == texts.introspection, "concept": name}
            rows[question] += [(fields | {"kind": "injected", "injected_position": k},
                                Trial(tuple(ids), *spans[k - 1], vector, strength)) for k in range(1, n + 1)]
            rows[question] += [(fields | {"kind": "random", "injected_position": k},
                                Trial(tuple(ids), *spans[k - 1], noise, noise_strength)) for k in range(1, n + 1)]
            rows[question].append((fields | {"kind": "control", "injected_position": None}, Trial(tuple(ids))))
    records = []
    for question, frame in frames.items():
        fields, trials = zip(*rows[question])
        probs, chosen, mass = option_answers(read_options(model, cell.layer, trials, frame.option_ids, batch_size))
        for row, (record, trial) in enumerate(zip(fields, trials)):
            prediction, position = int(chosen[row]) + 1, record["injected_position"]
            records.append(record | {
                "strength_absolute": float(trial.strength), "answer_probs": [float(p) for p in probs[row]],
                "option_mass": float(mass[row]), "prediction": prediction,
                "correct": None if position is None else prediction == position,
            })
    return records


def _sentence_trials(sentences, n_trials, names, seed):
    """Per trial: (index into the sentence pool, concept name); sentences in a seeded order without
    repeats until the pool is used up, concepts in turn."""
    order = np.random.default_rng(seed).permutation(len(sentences))
    return [(int(order[t % len(order)]), names[t % len(names)]) for t in range(n_trials)]


def _asking(question, sentence):
    return f"{question}\n\n{sentence}"


def run_thought_vs_text(model, tokenizer, cell, texts, sentences, n_trials, seed=0, batch_size=8, concepts=None):
    """Thought vs text: trial t injects concept t mod len(concepts) on the tokens of a sentence
    from the pool (seeded), once with nothing injected, under two questions. 'thought': which word
    the model thinks about, read as in run_forced_identification (the concept's first token ranked
    against every concept of the vector file after the prefill). 'text': repeat the sentence, which
    is teacher-forced as the answer and scored token by token. Records: trial, sentence_id, kind,
    concept, question, strength_absolute; for 'thought' the ranking fields of
    run_forced_identification; for 'text' n_tokens (the sentence's), mean_logprob, token_accuracy
    (the share of them that are the most probable token), exact (all are) and correct (= exact)."""
    candidates = cell.vectors.names
    prefill = answer_start(texts.thought_prefill, cell.chat)
    option_ids = first_token_ids(tokenizer, prefill, [concept_word(n) for n in candidates])
    thought, text = [], []
    for t, (index, name) in enumerate(_sentence_trials(sentences, n_trials, cell.concepts(concepts), seed)):
        sentence = sentences[index]
        fields = cell.columns("thought_vs_text") | {"trial": t, "sentence_id": index, "concept": name}
        vector, strength = cell.injection(name)
        ids, [span] = conversation_ids(tokenizer, [_asking(texts.thought_question, sentence)], cell.chat, [sentence],
                                       prefill, texts.path)
        thought += [(fields | {"kind": "injected"}, Trial(tuple(ids), *span, vector, strength)),
                    (fields | {"kind": "control"}, Trial(tuple(ids)))]
        ids, [span] = conversation_ids(tokenizer, [_asking(texts.repeat_question, sentence)], cell.chat, [sentence],
                                       "", texts.path)
        answer = encode(tokenizer, answer_start(sentence, cell.chat))
        fields |= {"n_tokens": len(answer)}  # thought's rows hold copies made before
        text += [(fields | {"kind": "injected"}, Trial(tuple(ids + answer), *span, vector, strength)),
                 (fields | {"kind": "control"}, Trial(tuple(ids + answer)))]
    fields, trials = zip(*thought)
    log_probs = read_options(model, cell.layer, trials, option_ids, batch_size)
    records = [record | {"question": "thought", "strength_absolute": float(trial.strength)}
               | _ranking(row, record["concept"], candidates, option_ids)
               for record, trial, row in zip(fields, trials, log_probs)]
    fields, trials = zip(*text)
    scored = read_continuations(model, cell.layer, trials, [f["n_tokens"] for f in fields], batch_size)
    for record, trial, (scores, hits) in zip(fields, trials, scored):
        records.append(record | {
            "question": "text", "strength_absolute": float(trial.strength), "mean_logprob": float(scores.mean()),
            "token_accuracy": float(hits.mean()), "exact": bool(hits.all()), "correct": bool(hits.all()),
        })
    return records


def run_prefill_intent(model, tokenizer, cell, texts, sentences, n_trials, seed=0, batch_size=8, concepts=None):
    """Prefill intent: the model is asked which word it thinks about when it reads a sentence
    (seeded, from the pool), its answer is prefilled with the word of concept t mod len(concepts),
    and it is asked whether it meant to say it; P(intended) against P(accident) is read after the
    answer prefill. Per trial: the word's own vector injected on the sentence's tokens
    ('injected'), the next concept's vector there ('mismatched'), nothing ('control'). Records:
    trial, sentence_id, kind, concept (the prefilled word's), injected_concept, question,
    strength_absolute, p_yes (intended), p_no, option_mass, prediction ('yes' claims intent)."""
    names = cell.concepts(concepts)
    if len(names) < 2:
        raise InputError(f"{cell.vector_path}: prefill intent needs two concepts or more (a mismatched one)")
    frame = _option_frame(tokenizer, texts.intent_answer, cell.chat)
    rows = []
    for t, (index, name) in enumerate(_sentence_trials(sentences, n_trials, names, seed)):
        sentence, other = sentences[index], names[(names.index(name) + 1) % len(names)]
        messages = [_asking(texts.word_question, sentence), concept_word(name).capitalize(), texts.follow_up]
        ids, [span] = conversation_ids(tokenizer, messages, cell.chat, [sentence], frame.prefill, texts.path)
        fields = cell.columns("prefill_intent") | {"trial": t, "sentence_id": index, "concept": name,
                                                   "question": "intent"}
        rows += [(fields | {"kind": "injected", "injected_concept": name},
                  Trial(tuple(ids), *span, *cell.injection(name))),
                 (fields | {"kind": "mismatched", "injected_concept": other},
                  Trial(tuple(ids), *span, *cell.injection(other))),
                 (fields | {"kind": "control", "injected_concept": None}, Trial(tuple(ids)))]
    fields, trials = zip(*rows)
    probs, _, mass = option_answers(read_options(model, cell.layer, trials, frame.option_ids, batch_size))
    return [record | {"strength_absolute": float(trial.strength), "p_yes": float(p[0]), "p_no": float(p[1]),
                      "option_mass": float(m), "prediction": "yes" if p[0] > p[1] else "no"}
            for record, trial, p, m in zip(fields, trials, probs, mass)]


def run_intentional_control(model, tokenizer, cell, texts, sentences, n_trials, seed=0, batch_size=8, concepts=None):
    """Intentional control (nothing is injected; the cell's strength is not used): trial t asks the
    model to write a sentence from the pool (seeded) while thinking about the word of concept
    t mod len(concepts) ('think'), while not thinking about it ('dont_think'), or with no word
    ('neutral'); the sentence is teacher-forced as the answer. Records: trial, sentence_id,
    concept, question (the instruction), cosine (the mean cosine similarity between the cell's
    hidden state on the answer's tokens and the concept vector), n_tokens."""
    rows = []
    for t, (index, name) in enumerate(_sentence_trials(sentences, n_trials, cell.concepts(concepts), seed)):
        sentence = sentences[index]
        answer = encode(tokenizer, answer_start(sentence, cell.chat))
        for instruction in INSTRUCTIONS:
            message = texts.instructions[instruction].format(sentence=sentence, word=concept_word(name))
            ids, _ = conversation_ids(tokenizer, [message], cell.chat, [], "", texts.path)
            rows.append((cell.columns("intentional_control") | {
                "trial": t, "sentence_id": index, "concept": name, "question": instruction, "n_tokens": len(answer),
            }, ids + answer))
    fields, sequences = zip(*rows)
    cosines = continuation_cosines(model, cell.layer, sequences, [f["n_tokens"] for f in fields],
                                   [cell.vectors.vector(f["concept"]) for f in fields], batch_size)
    return [record | {"cosine": float(c)} for record, c in zip(fields, cosines)]


# --- grading ------------------------------------------------------------------------------------

def grade_responses(model, tokenizer, responses, rubric, question, max_response_tokens=256, batch_size=8):
    """Grade detection responses (records of run_detection_responses) with a grading model: per
    criterion one pass, the verdict read from the probabilities of the rubric's yes and no options
    after the prefill (renormalised over the two). Injected trials are graded on CRITERIA, controls
    on CONTROL_CRITERIA (the others are None). `question` is the trial question the model saw.

    Returns the records with, per criterion c: p_c (probability of yes), c (p_c > 0.5), mass_c
    (the two options' mass under the full softmax); detected_and_identified (all four criteria;
    None for controls), truncated, grader, rubric_version, rubric_sha256."""
    if not responses:
        return []
    frame = answer_frame(tokenizer, rubric)
    sequences, owners, graded = [], [], []
    for index, record in enumerate(responses):
        text, truncated = truncate_completion(tokenizer, record["text"], max_response_tokens, rubric.truncation_marker)
        graded.append(dict(record, truncated=truncated, grader=judge_name(tokenizer), rubric_version=rubric.version,
                           rubric_sha256=rubric.sha256))
        for criterion in CRITERIA if record["kind"] == "injected" else CONTROL_CRITERIA:
            word = concept_word(record["concept"]) if record["concept"] is not None else ""
            user = rubric.user_template.format(
                instructions=rubric.instructions, question=question, response=text,
                criterion=rubric.criteria[criterion].format(word=word), options=" or ".join(rubric.options))
            sequences.append(framed_ids(tokenizer, rubric.system, user, frame.prefill))
            owners.append((index, criterion))
    log_probs = option_log_probs(model, tokenizer, sequences, frame.option_ids, batch_size,
                                 f"max_response_tokens (now {max_response_tokens})")
    probs, _, mass = option_answers(log_probs.numpy())
    for record in graded:
        record.update({name: None for c in CRITERIA for name in (f"p_{c}", c, f"mass_{c}")})
    for (index, criterion), p_yes, option_mass in zip(owners, probs[:, 0], mass):
        graded[index].update({f"p_{criterion}": float(p_yes), criterion: bool(p_yes > 0.5),
                              f"mass_{criterion}": float(option_mass)})
    for record in graded:
        record["detected_and_identified"] = all(record[c] for c in CRITERIA) if record["kind"] == "injected" else None
    return graded


# --- files --------------------------------------------------------------------------------------

def write_records(path, records, **provenance):
    """Write one cell's records as JSON, atomically, with the provenance given (e.g. model=the
    model record, vectors=cell.provenance(), texts=provenance(texts), settings=...) and the
    package versions."""
    write_json(path, {**provenance, "versions": versions(), "n_records": len(records), "records": records})
