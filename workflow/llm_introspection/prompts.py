"""Prompts and how every model input of the workflow is rendered as text.

One file per prompt (selected by the config); one place that decides how a message becomes a
model's input: `uses_chat_template` says whether a studied model reads its chat template (instruct
models in their native frame) or a plain frame, and `apply_template` is the only call of a chat
template, as on the day config key prompts.template_date names (passed as `date_string`, and the
day the template's strftime_now tells), so that a rendered prompt never depends on the day it was
made; every renderer takes that date as `template_date`. A base frame declares where its answer
ends (`base_end_labels`: the next turn's speaker or section label); `answer_end_labels` says which labels end a completion as
the model sees it. A judge or grader reads as an assistant: through its chat template
whenever its tokenizer has one (`framed_ids`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import read_yaml, validate
from .errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# The default of config key prompts.template_date (config/schema/config.schema.yaml gives the same,
# tests/test_design.py checks it): Llama 3's own. Chat templates that print a date read `date_string`
# (Llama 3); without it, or in templates that never read it (SmolLM3, Granite), they call strftime_now.
TEMPLATE_DATE = "26 Jul 2024"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Speaker labels of the plain transcript that models without a chat template read.
TRANSCRIPT_LABELS = {"user": "User:", "assistant": "Assistant:"}

PROMPT_TYPES = ("unconstrained", "self_reference", "structured_novelty", "topic_control")


@dataclass(frozen=True)
class Prompt:
    id: str
    type: str
    instruct: str
    base: str
    base_end_labels: tuple[str, ...] = ()  # a line starting with one of these ends the base answer


def load_prompt(path: Path | str) -> Prompt:
    """Read and validate one prompt file; its id must match the file name."""
    path = Path(path)
    data = validate(read_yaml(path), "prompt", f"prompt file {path}")
    if data["id"] != path.stem:
        raise InputError(f"prompt file {path}: key 'id' is {data['id']!r}, expected {path.stem!r}")
    lines = data["base"].splitlines()
    for label in data["base_end_labels"]:
        if not any(line.startswith(label) for line in lines):
            raise InputError(f"prompt file {path}: key 'base_end_labels': {label!r} starts no line of the base frame")
    return Prompt(**data | {"base_end_labels": tuple(data["base_end_labels"])})


def load_prompt_set(prompt_dir: Path | str) -> dict[str, Prompt]:
    """All prompts of a directory, by id."""
    paths = sorted(Path(prompt_dir).glob("*.yaml"))
    if not paths:
        raise InputError(f"prompt directory {prompt_dir}: no *.yaml prompt files")
    return {prompt.id: prompt for prompt in (load_prompt(p) for p in paths)}


def select_prompt_ids(prompt_config: Mapping[str, Any], prompts: Mapping[str, Prompt]) -> list[str]:
    """The design's prompt ids: explicit `ids`, else the first `per_type` of each type."""
    ids = prompt_config.get("ids")
    if ids:
        missing = [i for i in ids if i not in prompts]
        if missing:
            raise InputError(
                f"config key 'prompts.ids': no prompt file for {', '.join(missing)} "
                f"in {prompt_config['dir']}"
            )
        return list(ids)
    per_type = prompt_config.get("per_type")
    selected = []
    for prompt_type in PROMPT_TYPES:
        of_type = sorted(i for i, p in prompts.items() if p.type == prompt_type)
        selected.extend(of_type if per_type is None else of_type[:per_type])
    return selected


def uses_chat_template(variant: str, frame: str) -> bool:
    """Instruct models in their native frame get the chat template; everything else the base frame."""
    return variant == "instruct" and frame == "native"


def answer_end_labels(prompt: Prompt, variant: str, frame: str) -> tuple[str, ...]:
    """The labels whose line ends a completion of `prompt` as the model sees it: the base frame's;
    none under the chat template, where the model's eos ends the answer."""
    return () if uses_chat_template(variant, frame) else prompt.base_end_labels


def template_day(template_date: str) -> datetime:
    """The day of a template date as Llama 3 prints it ("26 Jul 2024": day, English month
    abbreviation, year); InputError naming config key prompts.template_date when it is no such day."""
    parts = str(template_date).split(" ")
    try:
        day, month, year = parts
        return datetime(int(year), MONTHS.index(month) + 1, int(day))
    except ValueError:
        raise InputError(f"config key 'prompts.template_date': {template_date!r} is not a day written like "
                         f"{TEMPLATE_DATE!r} (day, month {'/'.join(MONTHS)}, year)") from None


@contextmanager
def _pinned_clock(day: datetime) -> Iterator[None]:
    """While a chat template renders, its strftime_now (transformers' one clock a template can read:
    `datetime.now()` of transformers.utils.chat_template_utils) tells `day`, at midnight."""
    from transformers.utils import chat_template_utils

    clock = type("PinnedClock", (), {"now": staticmethod(lambda tz=None: day)})
    saved, chat_template_utils.datetime = chat_template_utils.datetime, clock
    try:
        yield
    finally:
        chat_template_utils.datetime = saved


def apply_template(tokenizer: PreTrainedTokenizerBase, messages: list[dict], add_generation_prompt: bool,
                   template_date: str | None) -> str:
    """`messages` through the tokenizer's chat template (the one call of a chat template), as on
    `template_date`: passed as `date_string` (Llama 3 prints it), and the day its strftime_now tells
    (templates that print today's date without reading date_string)."""
    if template_date is None:
        raise ValueError(f"tokenizer {tokenizer_name(tokenizer)}: a chat template is rendered only with a template "
                         "date (config key prompts.template_date)")
    with _pinned_clock(template_day(template_date)):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             date_string=template_date)


def render_prompt(prompt: Prompt, tokenizer: PreTrainedTokenizerBase, variant: str, frame: str,
                  model_name: str, template_date: str | None = TEMPLATE_DATE) -> tuple[str, list[int]]:
    """The exact text the model sees and its token ids (a chat template rendered as on
    `template_date`, see apply_template)."""
    if uses_chat_template(variant, frame):
        if not tokenizer.chat_template:
            raise InputError(
                f"model {model_name}: variant 'instruct' with frame 'native' needs a chat template, "
                "and its tokenizer has none (set frame: base or variant: base)"
            )
        text = chat_text(tokenizer, [{"role": "user", "content": prompt.instruct}], template_date=template_date)
        token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        text = prompt.base
        token_ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    return text, list(token_ids)


def tokenizer_name(tokenizer: PreTrainedTokenizerBase) -> str:
    """A tokenizer's name for messages: where it was loaded from."""
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def chat_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict],
              template_date: str | None = TEMPLATE_DATE) -> str:
    """`messages` through the tokenizer's chat template, up to where the assistant's answer starts."""
    return apply_template(tokenizer, messages, True, template_date)


def render_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[str], chat: bool,
                        template_date: str | None = TEMPLATE_DATE) -> str:
    """The text of a conversation (user and assistant messages alternating, the user's first and
    last) up to where the assistant's answer starts: through the chat template, or as a plain
    transcript ("User: ...", "Assistant: ...")."""
    roles = [("user", "assistant")[i % 2] for i in range(len(messages))]
    if not chat:
        turns = [f"{TRANSCRIPT_LABELS[role]} {text}" for role, text in zip(roles, messages)]
        return "\n\n".join(turns + [TRANSCRIPT_LABELS["assistant"]])
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(f"tokenizer {tokenizer_name(tokenizer)} has no chat template: render trials with chat=False")
    return chat_text(tokenizer, [{"role": r, "content": t} for r, t in zip(roles, messages)],
                     template_date=template_date)


def render_turns(tokenizer: PreTrainedTokenizerBase, messages: list[str], chat: bool,
                 template_date: str | None = TEMPLATE_DATE) -> str:
    """The text of complete turns (user and assistant messages alternating, the user's first),
    without the start of a next answer: the prefix that render_conversation of these turns and a
    further user message starts with (the steered first turn of the detection data)."""
    roles = [("user", "assistant")[i % 2] for i in range(len(messages))]
    if not chat:
        return "\n\n".join(f"{TRANSCRIPT_LABELS[role]} {text}" for role, text in zip(roles, messages))
    return apply_template(tokenizer, [{"role": r, "content": t} for r, t in zip(roles, messages)], False, template_date)


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of `text`, without the tokenizer's special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _framed_head(tokenizer, system, user, template_date):
    """A one-turn prompt up to the prefill, and whether tokenizing it adds special tokens."""
    if getattr(tokenizer, "chat_template", None):
        from jinja2 import TemplateError

        messages = [{"role": "user", "content": user}]
        if system:
            try:
                return chat_text(tokenizer, [{"role": "system", "content": system}, *messages],
                                 template_date=template_date), False
            except TemplateError:  # a template without a system role (Gemma's) raises
                messages = [{"role": "user", "content": f"{system}\n\n{user}"}]
        return chat_text(tokenizer, messages, template_date=template_date), False
    return (f"{system}\n\n{user}\n\n" if system else f"{user}\n\n"), True


def framed_ids(tokenizer: PreTrainedTokenizerBase, system: str, user: str, prefill: str,
               template_date: str | None = TEMPLATE_DATE) -> list[int]:
    """Token ids of a one-turn prompt answered with `prefill`: through the chat template (as on
    `template_date`) when the tokenizer has one (system message, user message, then the assistant
    turn), else as plain text (system text, user message, prefill). The prefill is tokenized alone,
    exactly as readout.option_token_ids sees it."""
    head, special = _framed_head(tokenizer, system, user, template_date)
    return list(tokenizer(head, add_special_tokens=special)["input_ids"]) + encode(tokenizer, prefill)
