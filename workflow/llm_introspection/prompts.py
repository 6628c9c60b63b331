"""The prompt set: one YAML file per prompt, selected by the config, rendered per model."""

from dataclasses import dataclass
from pathlib import Path

from .config import read_yaml, validate
from .errors import InputError

PROMPT_TYPES = ("unconstrained", "self_reference", "structured_novelty", "topic_control")


@dataclass(frozen=True)
class Prompt:
    id: str
    type: str
    instruct: str
    base: str


def load_prompt(path, schema_path=None):
    """Read one prompt file, validated when a schema is given; its id must match the file name."""
    path = Path(path)
    data = read_yaml(path)
    if schema_path is not None:
        validate(data, schema_path, f"prompt file {path}")
    if data["id"] != path.stem:
        raise InputError(f"prompt file {path}: key 'id' is {data['id']!r}, expected {path.stem!r}")
    return Prompt(**data)


def load_prompt_set(prompt_dir, schema_path):
    """All prompts of a directory, by id."""
    paths = sorted(Path(prompt_dir).glob("*.yaml"))
    if not paths:
        raise InputError(f"prompt directory {prompt_dir}: no *.yaml prompt files")
    return {prompt.id: prompt for prompt in (load_prompt(p, schema_path) for p in paths)}


def select_prompt_ids(prompt_config, prompts):
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


def uses_chat_template(variant, frame):
    """Instruct models in their native frame get the chat template; everything else the base frame."""
    return variant == "instruct" and frame == "native"


def render_prompt(prompt, tokenizer, variant, frame, model_name):
    """The exact text the model sees and its token ids."""
    if uses_chat_template(variant, frame):
        if not tokenizer.chat_template:
            raise InputError(
                f"model {model_name}: variant 'instruct' with frame 'native' needs a chat template, "
                "and its tokenizer has none (set frame: base or variant: base)"
            )
        messages = [{"role": "user", "content": prompt.instruct}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        text = prompt.base
        token_ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    return text, list(token_ids)
