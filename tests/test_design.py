"""The shipped configs and prompt set, and how prompts are rendered."""

import ast
import copy
import re
import shutil

import pytest

from conftest import CONFIG_SCHEMA, REPO, TINY_STUDY, merged
from llm_introspection.config import read_yaml, validate
from llm_introspection.errors import InputError
from llm_introspection.prompts import (
    PROMPT_TYPES, TEMPLATE_DATE, Prompt, answer_end_labels, load_prompt, load_prompt_set, render_prompt,
    select_prompt_ids, template_day,
)
from llm_introspection.sampling import answer_end


@pytest.fixture(scope="module")
def prompts():
    return load_prompt_set(REPO / "resources/prompts")


def test_prompt_set_is_four_types_of_ten_with_matching_frames(prompts):
    assert len(prompts) == 40
    for prompt_type in PROMPT_TYPES:
        assert len([p for p in prompts.values() if p.type == prompt_type]) == 10
    for prompt in prompts.values():
        assert prompt.instruct in prompt.base, f"{prompt.id}: the base frame must carry the same request"
        assert prompt.base == prompt.base.rstrip()


def test_default_config_is_the_embedded_small_design(prompts):
    config = validate(read_yaml(REPO / "config/config.yaml"), CONFIG_SCHEMA, "config")
    kinds = {name: m["source"]["kind"] for name, m in config["models"].items()}
    assert set(kinds.values()) == {"gguf_package", "lora"}  # the embedded models and their finetuned variants
    assert all(config["models"][name]["source"]["base"] in config["models"] for name, kind in kinds.items() if kind == "lora")
    assert {m["variant"] for m in config["models"].values()} == {"base", "instruct"}
    assert len(select_prompt_ids(config["prompts"], prompts)) == 8
    assert config["trace"]["layer_fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert config["runtime"] == {"device": "auto", "dtype": "auto", "gpu_memory_gb": 80, "gpu_weights_share": 0.6,
                                 "memory_budget_gb": None, "memory_fraction": 0.9, "progress_interval_s": 30,
                                 "threads": 1, "exclusive": False}  # two one-thread model jobs side by side


def test_seed_study_config_reproduces_the_original_design(prompts):
    config = validate(read_yaml(REPO / "config/seed_study.yaml"), CONFIG_SCHEMA, "config")
    models = config["models"]
    assert len(models) == 16
    ids = {m["source"]["id"] for m in models.values()}
    for base in ("meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.1-8B",
                 "Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-3B", "Qwen/Qwen2.5-7B"):
        assert {base, base + "-Instruct"} <= ids
    assert {"mistralai/Mistral-7B-v0.3", "mistralai/Mistral-7B-Instruct-v0.3", "google/gemma-2-9b", "google/gemma-2-9b-it"} <= ids
    pairs = {}
    for m in models.values():
        pairs.setdefault((m["family"], m["size_b"]), set()).add(m["variant"])
    assert len(pairs) == 8 and all(v == {"base", "instruct"} for v in pairs.values())
    assert len(select_prompt_ids(config["prompts"], prompts)) == 40
    gen = config["generation"]
    assert (gen["reps"], gen["temperature"], gen["top_p"], gen["max_new_tokens"], gen["seed"]) == (10, 0.8, 0.95, 500, 42)
    assert config["runtime"]["dtype"] == "bfloat16"


def test_validation_fills_defaults_and_names_bad_keys():
    config = {"models": {"m": {"family": "f", "size_b": 1, "variant": "base",
                               "source": {"kind": "local", "path": "x"}}},
              "prompts": {}, "generation": {"reps": 1, "max_new_tokens": 2}, "judge": {"model": "m"}}
    validate(config, CONFIG_SCHEMA, "config")
    assert config["generation"]["seed"] == 42 and config["models"]["m"]["trust_remote_code"] is False
    assert config["jobs"]["granularity"] == "model" and config["prompts"]["dir"] == "resources/prompts"
    assert config["judge"]["rubric"] == "resources/judge/rubric.yaml"
    bad = copy.deepcopy(config)
    bad["models"]["m"]["source"]["extra"] = 1
    with pytest.raises(InputError, match=r"key 'models.m.source': Additional properties are not allowed \('extra'"):
        validate(bad, CONFIG_SCHEMA, "config")
    bad = copy.deepcopy(config)
    bad["models"]["bad name!"] = bad["models"]["m"]
    with pytest.raises(InputError, match="key 'models': 'bad name!' does not match"):
        validate(bad, CONFIG_SCHEMA, "config")


BAD_SOURCE = {"family": "f", "size_b": 1, "variant": "base"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"generation": {"temperature": "hot"}}, "key 'generation.temperature': 'hot' is not of type 'number'"),
        ({"generation": {"reps": 0}}, "key 'generation.reps': 0 is less than the minimum of 1"),
        ({"models": {"bad": {**BAD_SOURCE, "source": {"kind": "ftp"}}}},
         "key 'models.bad.source.kind': 'ftp' is not one of"),
        ({"models": {"bad": {**BAD_SOURCE, "source": {"kind": "hf"}}}},
         "key 'models.bad.source': 'id' is a required property"),
        ({"jobs": {"granularity": "rep"}}, "key 'jobs.granularity'"),
    ],
)
def test_invalid_study_config_is_rejected_naming_the_key(change, message):
    """The workflow tests' tiny study with one mistake (the CLI shows the message: tests/test_workflow.py)."""
    with pytest.raises(InputError, match=re.escape(message)):
        validate(merged(copy.deepcopy(TINY_STUDY), change), CONFIG_SCHEMA, "the config")


def test_selection_by_type_and_by_id(prompts):
    assert select_prompt_ids({"per_type": 1, "ids": []}, prompts) == [
        "unconstrained_01", "self_reference_01", "structured_novelty_01", "topic_control_01"]
    assert select_prompt_ids({"ids": ["topic_control_05", "self_reference_02"]}, prompts) == [
        "topic_control_05", "self_reference_02"]
    with pytest.raises(InputError, match="prompts.ids.*nope"):
        select_prompt_ids({"ids": ["nope"], "dir": "d"}, prompts)


def test_id_must_match_the_file_name(tmp_path):
    (tmp_path / "a.yaml").write_text("id: b\ntype: topic_control\ninstruct: x\nbase: y\nbase_end_labels: []\n")
    with pytest.raises(InputError, match=r"a.yaml: key 'id' is 'b', expected 'a'"):
        load_prompt_set(tmp_path)


def test_every_base_frame_declares_where_its_answer_ends(prompts, tokenizer_dir):
    """Each frame's end labels start lines of the frame (its own speaker or section labels, the
    answer's own label last); a completion of the rendered base frame that invents the next turn
    ends before it; under the chat template no label applies."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    for prompt in prompts.values():
        lines = prompt.base.splitlines()
        assert prompt.base_end_labels in (("Interviewer:", "AI:"), ("Question:", "Answer:")), prompt.id
        assert all(any(line.startswith(label) for line in lines) for label in prompt.base_end_labels)
        assert lines[-1] == prompt.base_end_labels[-1]
        text, _ = render_prompt(prompt, tokenizer, "base", "native", "m")
        for label in prompt.base_end_labels:
            completion = f" A short answer.\n{label} an invented turn"
            assert text + completion == prompt.base + completion
            assert completion[: answer_end(completion, prompt.base_end_labels)] == " A short answer.\n"
        assert answer_end_labels(prompt, "base", "native") == prompt.base_end_labels
        assert answer_end_labels(prompt, "instruct", "base") == prompt.base_end_labels  # the shared frame
        assert answer_end_labels(prompt, "instruct", "native") == ()


def test_an_end_label_must_start_a_line_of_the_frame(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text('id: p\ntype: topic_control\ninstruct: x\nbase: "Q: x\\nA:"\nbase_end_labels: ["Q:", "Answer:"]\n')
    with pytest.raises(InputError, match=r"p.yaml: key 'base_end_labels': 'Answer:' starts no line of the base frame"):
        load_prompt(path)
    path.write_text('id: p\ntype: topic_control\ninstruct: x\nbase: "Q: x\\nA:"\nbase_end_labels: ["Q:", "A:"]\n')
    assert load_prompt(path).base_end_labels == ("Q:", "A:")


def test_prompt_file_with_a_missing_field_is_named(tmp_path):
    shutil.copytree(REPO / "resources/prompts", tmp_path, dirs_exist_ok=True)
    broken = tmp_path / "topic_control_03.yaml"
    broken.write_text("id: topic_control_03\ntype: topic_control\ninstruct: Explain tides.\n")
    with pytest.raises(InputError, match=re.escape(f"prompt file {broken} is invalid")) as error:
        load_prompt_set(tmp_path)
    assert "key '(top level)': 'base' is a required property" in str(error.value)


def test_rendering_uses_the_chat_template_only_for_native_instruct(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt = Prompt("p", "self_reference", "What are you?", "Interviewer: What are you?\nAI:")
    text, ids = render_prompt(prompt, tokenizer, "instruct", "native", "m")
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    assert "What are you?" in text and ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    for variant, frame in (("instruct", "base"), ("base", "native")):
        text, ids = render_prompt(prompt, tokenizer, variant, frame, "m")
        assert text == prompt.base and ids == tokenizer(prompt.base)["input_ids"]
    tokenizer.chat_template = None
    with pytest.raises(InputError, match="model m: .*chat template"):
        render_prompt(prompt, tokenizer, "instruct", "native", "m")


# A Llama-3-style template: it prints the date it is given, or today's date when none is.
DATED_TEMPLATE = (
    "{% if date_string is not defined %}{% set date_string = strftime_now('%d %b %Y') %}{% endif %}"
    "Today Date: {{ date_string }}\n{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
# A SmolLM3/Granite-style template: it prints today's date and reads no date_string.
CLOCK_TEMPLATE = (
    "Today Date: {{ strftime_now('%d %B %Y') }}\n{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
PROMPT = Prompt(id="p", type="self_reference", instruct="What are you?", base="Q: What are you?\nA:")


def config_template_date(**prompts):
    """prompts.template_date of the tiny study's config (with `prompts` set) as the workflow reads it."""
    config = merged(copy.deepcopy(TINY_STUDY), {"prompts": prompts})
    return validate(config, CONFIG_SCHEMA, "config")["prompts"]["template_date"]


def test_the_template_date_defaults_to_the_librarys():
    schema = read_yaml(CONFIG_SCHEMA)["properties"]["prompts"]["properties"]["template_date"]
    assert schema["default"] == TEMPLATE_DATE == config_template_date()
    assert read_yaml(REPO / "config/config.yaml")["prompts"]["template_date"] == TEMPLATE_DATE
    assert read_yaml(REPO / "config/seed_study.yaml")["prompts"]["template_date"] == TEMPLATE_DATE


@pytest.mark.parametrize("template, printed", [(DATED_TEMPLATE, TEMPLATE_DATE), (CLOCK_TEMPLATE, "26 July 2024")])
def test_rendered_prompts_do_not_depend_on_the_day(tokenizer_dir, monkeypatch, template, printed):
    """Under two faked clocks a template that prints the date renders the same ids: the config's
    date, as date_string (Llama 3) or as the day its strftime_now tells (a template without one)."""
    from datetime import datetime

    from transformers import AutoTokenizer
    from transformers.utils import chat_template_utils

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = template
    date = config_template_date()
    rendered, unpinned = [], []
    for day in (datetime(2025, 1, 1), datetime(2031, 6, 30)):
        monkeypatch.setattr(chat_template_utils, "datetime", type("Clock", (), {"now": staticmethod(lambda: day)}))
        rendered.append(render_prompt(PROMPT, tokenizer, "instruct", "native", "m", template_date=date))
        unpinned.append(tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False))
        assert chat_template_utils.datetime.now() == day  # the clock is the test's again after rendering
    assert unpinned[0] != unpinned[1]  # the template does read the clock
    assert rendered[0] == rendered[1] and f"Today Date: {printed}\n" in rendered[0][0]


@pytest.mark.parametrize("template, printed", [(DATED_TEMPLATE, "1 Mar 2031"), (CLOCK_TEMPLATE, "01 March 2031")])
def test_changing_the_template_date_changes_the_rendered_ids(tokenizer_dir, template, printed):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = template
    default, later = (render_prompt(PROMPT, tokenizer, "instruct", "native", "m",
                                    template_date=config_template_date(**settings))
                      for settings in ({}, {"template_date": "1 Mar 2031"}))
    assert default[1] != later[1] and f"Today Date: {printed}\n" in later[0]
    # a model that reads a plain frame renders no template: no date, and none needed
    assert render_prompt(PROMPT, tokenizer, "base", "native", "m", template_date=None)[0] == PROMPT.base
    with pytest.raises(ValueError, match="only with a template date"):
        render_prompt(PROMPT, tokenizer, "instruct", "native", "m", template_date=None)


def test_a_template_date_that_is_no_day_is_refused_naming_the_key():
    with pytest.raises(InputError, match=re.escape("key 'prompts.template_date': '2024-07-26' does not match")):
        config_template_date(template_date="2024-07-26")
    assert config_template_date(template_date="5 Jan 2025") == "5 Jan 2025"
    assert template_day("05 Jan 2025") == template_day("5 Jan 2025")
    with pytest.raises(InputError, match=re.escape("config key 'prompts.template_date': '31 Feb 2024' is not a day")):
        template_day(config_template_date(template_date="31 Feb 2024"))  # the form passes; the Snakefile checks the day


LIBRARY_AND_SCRIPTS = (REPO / "workflow/llm_introspection", REPO / "workflow/scripts")


def test_every_call_of_a_renderer_passes_the_template_date_on():
    """Every function of the library that renders a chat template takes `template_date` (defaulting
    to TEMPLATE_DATE, or required): every call of one in the library and the rule scripts passes it
    on, so no job renders with the default when its config says another date."""
    trees = {path: ast.parse(path.read_text()) for folder in LIBRARY_AND_SCRIPTS for path in folder.rglob("*.py")}
    positions = {}  # renderer -> the position of template_date among its positional parameters (None: keyword-only)
    for tree in trees.values():
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            arguments = node.args
            positional = [a.arg for a in [*arguments.posonlyargs, *arguments.args]]
            defaults = dict(zip(positional[len(positional) - len(arguments.defaults):], arguments.defaults))
            defaults |= {a.arg: d for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults)}
            if "template_date" in positional or "template_date" in [a.arg for a in arguments.kwonlyargs]:
                default = defaults.get("template_date")
                if default is None or ast.unparse(default) == "TEMPLATE_DATE":  # open_model's None: no renderer
                    index = positional.index("template_date") if "template_date" in positional else None
                    positions[node.name] = index
    assert {"apply_template", "render_prompt", "chat_text", "render_conversation", "render_turns", "framed_ids",
            "conversation_ids", "run_generate", "run_judge", "run_inject"} <= set(positions)
    missing = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in positions or any(k.arg == "template_date" for k in node.keywords):
                continue
            if positions[name] is None or len(node.args) <= positions[name]:
                missing.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    assert not missing, "calls that leave template_date to its default: " + "; ".join(missing)
