"""One loader for every model source: prepare once (convert, download, build), then load fast.

`prepare_model` turns a config entry into a manifest and, for GGUF and tiny random sources,
a safetensors directory; `prepare_lora` makes a LoRA variant's manifest from its base model's;
`load_model` loads any manifest onto a device in a dtype (a LoRA adapter merged in).
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import InputError
from .models_check import package_locations, packaged_file
from .placement import load_placement
from .storage import atomic_path, read_json, remove_stale_temporaries, versions

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def describe_source(source: dict) -> str:
    """A one-line description of a source, for messages."""
    details = {k: v for k, v in source.items() if k not in ("kind", "config")}
    return f"{source['kind']} " + " ".join(f"{k}={v}" for k, v in details.items())


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"config key 'runtime.device': {name!r} asked for, but CUDA is not available")
    return name


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return _DTYPES[name]


def _fingerprint(directory):
    """sha256 of config.json plus the names and sizes of the weight files of a model directory."""
    directory = Path(directory)
    digest = hashlib.sha256((directory / "config.json").read_bytes())
    for path in sorted(directory.iterdir()):
        if path.suffix in (".safetensors", ".bin", ".json", ".model"):
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return digest.hexdigest()


def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _locate_packaged_gguf(source, work_dir):
    """Path of a GGUF shipped in a package; assembled from chunks when the source says so."""
    if not source["assemble"]:
        return packaged_file(source["package"], source["file"])
    package_locations(source["package"])  # installed, or InputError
    module = importlib.import_module(source["package"])
    return Path(module.assemble(output_path=Path(work_dir) / source["file"]))


def _save_clean(model, tokenizer, out_dir):
    """save_pretrained a model loaded from GGUF: its quantizer marks must go first."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _convert_gguf(gguf_path, out_dir, trust_remote_code):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    kwargs = dict(gguf_file=gguf_path.name, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    _save_clean(model, tokenizer, out_dir)


def _build_tiny_random(source, out_dir):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source["tokenizer"])
    settings = dict(source["config"])
    settings.setdefault("vocab_size", len(tokenizer))
    config = AutoConfig.for_model(**settings)
    torch.manual_seed(source["seed"])
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _download_hf(source):
    """Download a Hub snapshot (token from the environment, never recorded); return path, commit."""
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download(repo_id=source["id"], revision=source["revision"]))
    return path, path.name


def prepare_model(name: str, spec: dict, out_dir: Path | str) -> dict:
    """Make a model loadable fast and return its manifest (written by the caller).

    GGUF and tiny random sources become a safetensors directory `out_dir/weights`; Hub
    sources are downloaded into the Hugging Face cache; local directories are used in place.
    Paths in the manifest are as given (relative to the working directory when relative).
    """
    source = spec["source"]
    kind = source["kind"]
    out_dir = Path(out_dir)
    weights = out_dir / "weights"
    manifest = {key: spec[key] for key in ("family", "size_b", "variant", "frame", "trust_remote_code")}
    manifest.update(name=name, source=source, prepared_with=versions())
    try:
        if kind == "hf":
            load_path, commit = _download_hf(source)
            manifest.update(load_path=str(load_path), revision=commit)
        elif kind == "local":
            load_path = Path(source["path"])
            if not (load_path / "config.json").is_file():
                raise InputError(f"{load_path} has no config.json (not a save_pretrained directory)")
            # as the config names it (relative to the working directory), so a moved study still finds it
            manifest.update(load_path=str(load_path), revision=f"sha256:{_fingerprint(load_path)}")
        else:
            if weights.exists():
                shutil.rmtree(weights)
            remove_stale_temporaries([weights])
            if kind == "tiny_random":
                with atomic_path(weights) as tmp:
                    _build_tiny_random(source, tmp)
                revision = f"random-seed-{source['seed']}"
            else:
                gguf = Path(source["path"]) if kind == "gguf_file" else _locate_packaged_gguf(source, out_dir)
                if not gguf.is_file():
                    raise InputError(f"GGUF file {gguf} not found")
                revision = f"sha256:{_file_sha256(gguf)}"
                with atomic_path(weights) as tmp:
                    _convert_gguf(gguf, tmp, spec["trust_remote_code"])
                if kind == "gguf_package" and source["assemble"]:
                    gguf.unlink()  # the assembled copy: the converted weights replace it
            manifest.update(load_path=str(weights), revision=revision)
    except InputError as error:
        raise InputError(f"model {name} (source {describe_source(source)}): {error}") from None
    except Exception as error:  # anything transformers or the hub raises: name the model
        raise InputError(
            f"model {name} (source {describe_source(source)}) could not be prepared: "
            f"{type(error).__name__}: {error}"
        ) from error
    config = _read_config(manifest["load_path"])
    manifest.update(
        model_type=config.get("model_type"),
        n_layers=config.get("num_hidden_layers"),
        hidden_size=config.get("hidden_size"),
    )
    return manifest


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_sha256(adapter_dir: Path | str) -> str:
    """sha256 of a LoRA adapter directory's config and weights (ADAPTER_FILES, in order)."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        path = Path(adapter_dir) / name
        if not path.is_file():
            raise InputError(f"LoRA adapter {adapter_dir} has no {name}")
        digest.update(name.encode())
        digest.update(_file_sha256(path).encode())
    return digest.hexdigest()


def prepare_lora(name: str, spec: dict, base: dict, adapter_dir: Path | str) -> dict:
    """The manifest of a `lora` source: its base model's manifest (`base`, whose weights it loads
    and whose trust_remote_code applies) plus the adapter (path as given, sha256, LoRA settings).
    The revision names both: '<base revision>+lora-sha256:<adapter hash>'."""
    digest = adapter_sha256(adapter_dir)
    settings = read_json(Path(adapter_dir) / "adapter_config.json")
    manifest = {key: base[key] for key in ("load_path", "model_type", "n_layers", "hidden_size", "trust_remote_code")}
    manifest.update({key: spec[key] for key in ("family", "size_b", "variant", "frame")})
    manifest.update(
        name=name, source=spec["source"], prepared_with=versions(),
        revision=f"{base['revision']}+lora-sha256:{digest}",
        base={key: base[key] for key in ("name", "source", "revision")},
        adapter={"path": str(adapter_dir), "sha256": digest,
                 "settings": {key: settings.get(key) for key in ("peft_type", "r", "lora_alpha", "lora_dropout",
                                                                 "target_modules")}},
    )
    return manifest


def _apply_adapter(manifest, model):
    """The base model with the manifest's LoRA adapter merged into its weights (plain transformers
    modules afterwards, so hooks see the usual layers); InputError if the adapter changed since
    prepare_model hashed it."""
    from peft import PeftModel

    adapter = manifest["adapter"]
    if adapter_sha256(adapter["path"]) != adapter["sha256"]:
        raise InputError(f"model {manifest['name']}: LoRA adapter {adapter['path']} changed since it was prepared: "
                         f"rebuild with `snakemake --forcerun results/models/{manifest['name']}/manifest.json`")
    return PeftModel.from_pretrained(model, adapter["path"], is_trainable=False).merge_and_unload()


def _read_config(load_path):
    config = read_json(Path(load_path) / "config.json")
    return config if "num_hidden_layers" in config else config.get("text_config", config)


def _loading(manifest, what, load):
    try:
        return load()
    except Exception as error:
        raise InputError(
            f"model {manifest['name']} (source {describe_source(manifest['source'])}): its {what} could "
            f"not be loaded from {manifest['load_path']}: {type(error).__name__}: {error}"
        ) from error


def visible_gpu_memory() -> list[int]:
    """Free bytes on each visible CUDA device (none without CUDA)."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.mem_get_info(index)[0] for index in range(torch.cuda.device_count())]


def load_model(manifest: dict, device: str, dtype: torch.dtype, gpus: int = 1,
               placement: dict | None = None) -> PreTrainedModel:
    """Load a prepared model in eval mode, on `device`, in `dtype`; over `gpus` GPUs when more
    than one (placement.load_placement). `placement` replaces the computed from_pretrained
    placement arguments (device_map, max_memory, offload_folder), e.g. to offload layers."""
    from transformers import AutoModelForCausalLM

    # device_map loads straight onto a GPU; on the CPU it only slows loading down (measured 1.5 s)
    if placement is None:
        placement = load_placement(device, gpus, visible_gpu_memory() if gpus > 1 else [])
    model = _loading(manifest, "weights", lambda: AutoModelForCausalLM.from_pretrained(
        manifest["load_path"], dtype=dtype, trust_remote_code=manifest["trust_remote_code"], **placement
    ))
    if manifest.get("adapter"):
        model = _loading(manifest, "LoRA adapter", lambda: _apply_adapter(manifest, model))
    return model.eval()


def load_tokenizer(manifest: dict) -> PreTrainedTokenizerBase:
    """Load a prepared model's tokenizer; one without a pad token pads with eos."""
    from transformers import AutoTokenizer

    tokenizer = _loading(manifest, "tokenizer", lambda: AutoTokenizer.from_pretrained(
        manifest["load_path"], trust_remote_code=manifest["trust_remote_code"]
    ))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
