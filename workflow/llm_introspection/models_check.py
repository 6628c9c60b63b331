"""Checks of the config's models that load no weights and download nothing: the Snakefile runs
them at parse time, so a missing model or one that needs custom code fails before any job.

Free of torch imports.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import InputError
from .storage import read_json


def package_locations(package: str) -> list[Path]:
    """The directories of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"package {package!r} is not installed (see the README's setup)")
    return [Path(location) for location in spec.submodule_search_locations]


def packaged_file(package: str, name: str) -> Path:
    """A file shipped inside an installed package."""
    for location in package_locations(package):
        if (location / name).is_file():
            return location / name
    raise InputError(f"package {package!r} has no file {name!r}")


def _cached_hub_config(source):
    """The Hub model's config.json from the Hugging Face cache (HF_HOME), or None if not cached."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source["id"], "config.json", revision=source["revision"])
    return read_json(found) if isinstance(found, str) else None


def source_config(source: Mapping[str, Any]) -> dict[str, Any] | None:
    """The config.json that comes with a source's weights, where it can be read now: a local
    directory's, a Hub model's when the cache has it; None for the other kinds. A local directory
    or GGUF file that is not there, or a package not installed, raises InputError."""
    kind = source["kind"]
    if kind == "local":
        path = Path(source["path"])
        if not path.is_dir():
            raise InputError(f"{path} is not a directory")
        if not (path / "config.json").is_file():
            raise InputError(f"{path} has no config.json (not a save_pretrained directory)")
        return read_json(path / "config.json")
    if kind == "gguf_file" and not Path(source["path"]).is_file():
        raise InputError(f"GGUF file {source['path']} not found")
    if kind == "gguf_package":
        if source["assemble"]:
            package_locations(source["package"])  # the file is assembled from chunks when prepared
        else:
            packaged_file(source["package"], source["file"])
    if kind == "hf":
        return _cached_hub_config(source)
    return None


def _code_repository(auto_map, default):
    """Where custom code comes from: the repository an auto_map entry names ('repo--module.Class'),
    else the model's own."""
    for target in auto_map.values():
        for reference in target if isinstance(target, list) else [target]:
            if reference and "--" in reference:
                return reference.split("--")[0]
    return default


def check_models(models: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise InputError, naming the model and its key, for a model whose source is not there or
    that needs custom code (auto_map in its config.json) without `trust_remote_code: true`."""
    for name, spec in models.items():
        source = spec["source"]
        try:
            config = source_config(source)
        except InputError as error:
            raise InputError(f"model {name}: config key 'models.{name}.source': {error}") from None
        if config and "auto_map" in config and not spec["trust_remote_code"]:
            repository = _code_repository(config["auto_map"], source.get("id") or source.get("path"))
            raise InputError(
                f"model {name} needs custom code from {repository}: set "
                f"`models.{name}.trust_remote_code: true` if you trust it"
            )


def workflow_adapter(base: str, variant: str) -> str:
    """The adapter directory the finetune rule writes for variant `variant` of model `base`."""
    return f"results/finetune/{base}/{variant}/adapter"


def adapter_path(source: dict) -> str:
    """Where a `lora` source's adapter is: its path, or the finetune rule's output for {variant: V}."""
    adapter = source["adapter"]
    return workflow_adapter(source["base"], adapter["variant"]) if isinstance(adapter, dict) else adapter


def check_lora_sources(models: dict, variants: dict) -> None:
    """Raise InputError, naming the model and key, for a `lora` source whose base is not a model of
    the config (or is a LoRA source itself), whose adapter variant is not a key of
    finetune.variants, or whose adapter directory lacks the peft files."""
    for name, spec in models.items():
        source = spec["source"]
        if source["kind"] != "lora":
            continue
        key = f"model {name}: config key 'models.{name}.source"
        base = source["base"]
        if base not in models:
            raise InputError(f"{key}.base': {base!r} is not one of the models ({', '.join(models)})")
        if models[base]["source"]["kind"] == "lora":
            raise InputError(f"{key}.base': {base!r} is a LoRA source itself; the base must be a full model")
        adapter = source["adapter"]
        if isinstance(adapter, dict):
            if adapter["variant"] not in variants:
                raise InputError(f"{key}.adapter.variant': {adapter['variant']!r} is not one of finetune.variants "
                                 f"({', '.join(variants) or 'none'})")
            continue
        for file in ("adapter_config.json", "adapter_model.safetensors"):
            if not (Path(adapter) / file).is_file():
                raise InputError(f"{key}.adapter': {adapter} has no {file} (not a peft adapter directory)")
