"""LLM judge: a local causal LM rates completions, read from its option probabilities.

For every completion and dimension the judge reads one prompt (the rubric's instructions, the
original prompt, the completion, the dimension's question and levels) whose assistant turn is
prefilled with the answer start ("Score:"). One forward pass gives the next-token logits; the
four option tokens "0".."3" are renormalised among themselves into p0..p3, so there is always a
score: the expected score sum(k * p_k) and the argmax. The mass the options had under the full
softmax is kept as a diagnostic (low mass: the judge wanted to say something else).
"""

import hashlib
import string
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .config import read_yaml, validate
from .errors import InputError
from .sampling import left_pad

DIMENSIONS = ("self_reference", "meta_cognition", "hedging", "introspective_depth")
TEMPLATE_FIELDS = frozenset({"instructions", "prompt", "completion", "question", "levels", "options"})
REQUIRED_FIELDS = frozenset({"completion", "question", "levels"})
COLUMNS = ("item", "dimension", "p0", "p1", "p2", "p3", "expected", "argmax", "option_mass", "truncated",
           "judge_prompt_tokens")


@dataclass(frozen=True)
class Dimension:
    question: str
    levels: tuple


@dataclass(frozen=True)
class RubricText:
    """What every rubric file holds: the prompt's texts and the answer options read after the prefill."""

    path: Path
    version: int
    sha256: str
    system: str | None
    instructions: str
    user_template: str
    prefill: str
    separator: str
    options: tuple
    truncation_marker: str


def rubric_text_fields(path, data, sha256):
    """The RubricText fields of a validated rubric file's data, by name."""
    return dict(path=path, version=data["version"], sha256=sha256, system=data["system"],
                instructions=data["instructions"], user_template=data["user_template"], prefill=data["prefill"],
                separator=data["separator"], options=tuple(data["options"]),
                truncation_marker=data["truncation_marker"])


@dataclass(frozen=True)
class Rubric(RubricText):
    dimensions: dict  # name -> Dimension, in DIMENSIONS order


@dataclass(frozen=True)
class AnswerFrame:
    """How the answer is read with one tokenizer: the text the judge prompt ends with, and the
    token id of each option as the next token after it."""

    prefill: str
    option_ids: tuple


def load_rubric(path, schema_path):
    """Read and validate a rubric file; InputError names the file and the key at fault."""
    path = Path(path)
    data = read_yaml(path)
    validate(data, schema_path, f"rubric file {path}")
    fields = {name for _, name, _, _ in string.Formatter().parse(data["user_template"]) if name is not None}
    unknown, missing = fields - TEMPLATE_FIELDS, REQUIRED_FIELDS - fields
    if unknown or missing:
        problems = [f"unknown field {{{f}}}" for f in sorted(unknown)] + [f"no {{{f}}}" for f in sorted(missing)]
        raise InputError(
            f"rubric file {path}: key 'user_template': {', '.join(problems)} "
            f"(its fields: {', '.join('{' + f + '}' for f in sorted(TEMPLATE_FIELDS))})"
        )
    return Rubric(
        **rubric_text_fields(path, data, hashlib.sha256(path.read_bytes()).hexdigest()),
        dimensions={name: Dimension(data["dimensions"][name]["question"], tuple(data["dimensions"][name]["levels"]))
                    for name in DIMENSIONS},
    )


def encode(tokenizer, text):
    """Token ids of `text`, without the tokenizer's special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def judge_name(tokenizer):
    """The judge's name for messages: where its tokenizer was loaded from."""
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def option_token_ids(tokenizer, options, prefill):
    """The token id of each option as the next token right after `prefill`.

    The id is the one token that `prefill + option` has beyond the tokens of `prefill`, so a
    tokenizer's own way of joining them (" 0" as one token, or a space and "0") is what counts.
    InputError names the judge and the option when that is not exactly one extra token.
    """
    base = encode(tokenizer, prefill)
    ids = []
    for option in options:
        full = encode(tokenizer, prefill + option)
        if full[: len(base)] != base or len(full) != len(base) + 1:
            extra = full[len(base):] if full[: len(base)] == base else full
            raise InputError(
                f"judge {judge_name(tokenizer)}: answer option {option!r} after the prefill {prefill!r} "
                f"is not exactly one token of its tokenizer (it is {tokenizer.convert_ids_to_tokens(extra)})"
            )
        ids.append(full[-1])
    if len(set(ids)) != len(ids):
        raise InputError(f"judge {judge_name(tokenizer)}: answer options {list(options)} share a token ({ids})")
    return ids


def answer_frame(tokenizer, rubric):
    """Where the separator goes for this tokenizer: with the options (" 0" is one token) or at
    the end of the prompt (a space token, then "0"); InputError when neither makes every option
    one token."""
    attempts = [(rubric.prefill, [rubric.separator + o for o in rubric.options])]
    if rubric.separator:
        attempts.append((rubric.prefill + rubric.separator, list(rubric.options)))
    errors = []
    for prefill, options in attempts:
        try:
            return AnswerFrame(prefill, tuple(option_token_ids(tokenizer, options, prefill)))
        except InputError as error:
            errors.append(str(error))
    raise InputError(f"rubric file {rubric.path}: key 'options': " + "; and ".join(errors))


def truncate_completion(tokenizer, text, max_tokens, marker):
    """The first `max_tokens` tokens of `text` (plus `marker` when cut) and whether it was cut."""
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise InputError(f"judge max_completion_tokens must be a positive integer, got {max_tokens!r}")
    text = text or ""
    ids = encode(tokenizer, text)
    if len(ids) <= max_tokens:
        return text, False
    return tokenizer.decode(ids[:max_tokens]) + marker, True


def _options_text(options):
    return ", ".join(options[:-1]) + " or " + options[-1]


def render_user_message(rubric, dimension, completion_text, prompt_text):
    """The user message for one dimension (the completion already truncated)."""
    if dimension not in rubric.dimensions:
        raise InputError(f"rubric file {rubric.path}: no dimension {dimension!r} (it has {list(rubric.dimensions)})")
    spec = rubric.dimensions[dimension]
    levels = "\n".join(f"{option}: {meaning}" for option, meaning in zip(rubric.options, spec.levels))
    return rubric.user_template.format(
        instructions=rubric.instructions, prompt=prompt_text or "", completion=completion_text,
        question=spec.question, levels=levels, options=_options_text(rubric.options),
    )


def _frame_head(tokenizer, system, user):
    """The judge prompt up to the prefill, and whether tokenizing it adds special tokens."""
    if getattr(tokenizer, "chat_template", None):
        from jinja2 import TemplateError

        messages = [{"role": "user", "content": user}]
        if system:
            try:
                text = tokenizer.apply_chat_template(
                    [{"role": "system", "content": system}, *messages], tokenize=False, add_generation_prompt=True
                )
                return text, False
            except TemplateError:  # a template without a system role (Gemma's) raises
                messages = [{"role": "user", "content": f"{system}\n\n{user}"}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), False
    return (f"{system}\n\n{user}\n\n" if system else f"{user}\n\n"), True


def framed_ids(tokenizer, system, user, prefill):
    """Token ids of a one-turn prompt answered with `prefill`: through the chat template when the
    tokenizer has one (system message, user message, then the assistant turn), else as plain text
    (system text, user message, prefill). The prefill is tokenized alone, exactly as
    option_token_ids saw it."""
    head, special = _frame_head(tokenizer, system, user)
    return list(tokenizer(head, add_special_tokens=special)["input_ids"]) + encode(tokenizer, prefill)


def _judge_ids(tokenizer, rubric, frame, dimension, completion_text, prompt_text):
    user = render_user_message(rubric, dimension, completion_text, prompt_text)
    return framed_ids(tokenizer, rubric.system, user, frame.prefill)


def build_judge_prompt(tokenizer, rubric, dimension, completion_text, prompt_text, max_completion_tokens):
    """Token ids of the judge prompt for one completion and dimension, and whether the completion
    was truncated to `max_completion_tokens` tokens (its beginning is kept).

    Through the chat template when the tokenizer has one (system message, user message, then the
    assistant turn prefilled), else a plain-text frame (system text, user message, prefill).
    """
    frame = answer_frame(tokenizer, rubric)
    completion, truncated = truncate_completion(tokenizer, completion_text, max_completion_tokens,
                                                rubric.truncation_marker)
    return _judge_ids(tokenizer, rubric, frame, dimension, completion, prompt_text), truncated


def _pad_id(tokenizer):
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def next_token_log_probs(model, sequences, option_ids, pad_id):
    """(len(sequences), n_options) float64 log-probabilities (full softmax) of the options as the
    next token after each sequence, in one left-padded forward pass under whatever hooks are on."""
    ids, mask, positions = left_pad(sequences, pad_id, model.device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                   logits_to_keep=1).logits[:, -1].float()
    log_probs = torch.log_softmax(logits, dim=-1)  # the full vocabulary, for this batch only
    return log_probs[:, torch.tensor(option_ids, device=model.device)].double().cpu()


@torch.inference_mode()
def option_log_probs(model, tokenizer, sequences, option_ids, batch_size, setting):
    """(len(sequences), n_options) float64 log-probabilities of the options as the next token,
    batched longest first; InputError naming the model and `setting` (the knob that shortens the
    prompts) when a sequence is longer than the model's context."""
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max(map(len, sequences))
    if limit is not None and longest > limit:
        raise InputError(f"judge {judge_name(tokenizer)}: a judge prompt has {longest} tokens, more than its "
                         f"context of {limit}; lower {setting}")
    model.eval()
    out = torch.empty((len(sequences), len(option_ids)), dtype=torch.float64)
    # longest first, so a batch pads little; each row's result is independent of its batch mates
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        out[rows] = next_token_log_probs(model, [sequences[i] for i in rows], option_ids, _pad_id(tokenizer))
    return out


def score_completions(model, tokenizer, items, rubric, max_completion_tokens=512, batch_size=16, dimensions=None):
    """Judge every (prompt_text, completion_text) of `items` on every rubric dimension (or on
    those named in `dimensions`).

    One row per item x dimension (items in order, dimensions in DIMENSIONS order): item (index
    into items), dimension, p0..p3 (the option probabilities renormalised over the options),
    expected (sum k * p_k), argmax, option_mass (the options' total probability under the full
    softmax), truncated (the completion was cut to max_completion_tokens), judge_prompt_tokens.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"judge batch_size must be a positive integer, got {batch_size!r}")
    unknown = [d for d in dimensions or () if d not in rubric.dimensions]
    if unknown:
        raise InputError(f"rubric file {rubric.path}: no dimension {', '.join(map(repr, unknown))} "
                         f"(it has {', '.join(rubric.dimensions)})")
    selected = [d for d in rubric.dimensions if dimensions is None or d in dimensions]
    frame = answer_frame(tokenizer, rubric)
    rows, sequences = [], []
    for index, (prompt_text, completion_text) in enumerate(items):
        completion, truncated = truncate_completion(tokenizer, completion_text, max_completion_tokens,
                                                    rubric.truncation_marker)
        for dimension in selected:
            ids = _judge_ids(tokenizer, rubric, frame, dimension, completion, prompt_text)
            rows.append({"item": index, "dimension": dimension, "truncated": truncated, "judge_prompt_tokens": len(ids)})
            sequences.append(ids)
    if not sequences:
        return pd.DataFrame(columns=list(COLUMNS))
    log_probs = option_log_probs(model, tokenizer, sequences, frame.option_ids, batch_size,
                                 f"max_completion_tokens (now {max_completion_tokens})")
    probs = torch.softmax(log_probs, dim=-1)
    mass = log_probs.exp().sum(-1)
    levels = torch.arange(len(frame.option_ids), dtype=torch.float64)
    expected = (probs * levels).sum(-1)
    argmax = probs.argmax(-1)
    table = pd.DataFrame(rows)
    for k in range(probs.shape[1]):
        table[f"p{k}"] = probs[:, k].numpy()
    table["expected"] = expected.numpy()
    table["argmax"] = argmax.numpy().astype(int)
    table["option_mass"] = mass.numpy()
    return table[list(COLUMNS)]
