"""Where a model's weights go: how many GPUs a model job asks for, and how the job spreads the model
over them when it loads.

Torch-free: the workflow reads `model_gpus` at parse time (the `gpu` resource, which the SLURM
executor turns into --gpus), and a job passes `load_placement` the free memory of its visible GPUs.
A model on one GPU is loaded straight onto it; a model on N > 1 GPUs is loaded with
device_map="auto" and max_memory over GPUs 0..N-1, so accelerate places consecutive decoder layers
on each GPU (balanced) and moves activations between them.
"""

import math
from collections.abc import Sequence

from .errors import InputError

GIB = 1024**3
BYTES_PER_PARAMETER = {"float32": 4, "bfloat16": 2, "float16": 2}


def parameter_bytes(dtype: str, device: str) -> int:
    """Bytes per weight for a runtime dtype; 'auto' is bfloat16 on a GPU device ('cuda', 'auto'
    on a cluster node) and float32 on 'cpu'."""
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "bfloat16"
    return BYTES_PER_PARAMETER[dtype]


def weight_bytes(size_b: float, dtype: str, device: str) -> int:
    """Bytes of a model's weights: size_b billion parameters in the dtype it runs in."""
    return int(size_b * 1e9 * parameter_bytes(dtype, device))


def gpus_needed(size_b: float, dtype: str, device: str, gpu_memory_gb: float, weights_share: float) -> int:
    """The fewest GPUs of `gpu_memory_gb` GiB each whose `weights_share` holds the weights (the
    rest of each GPU stays free for the key/value cache and activations)."""
    if not 0 < weights_share <= 1:
        raise InputError(f"config key 'runtime.gpu_weights_share': {weights_share} is not in (0, 1]")
    per_gpu = gpu_memory_gb * GIB * weights_share
    return max(1, math.ceil(weight_bytes(size_b, dtype, device) / per_gpu))


def model_gpus(name: str, spec: dict, runtime: dict, copies: int = 1) -> int:
    """How many GPUs a job of model `name` asks for: the entry's `gpus` (default 1), or with
    `gpus: auto` what its size needs (gpus_needed) when `copies` copies of it are loaded at once
    (trace_noise holds a base model and its instruct partner). None on a CPU runtime."""
    requested = spec.get("gpus", 1)
    if requested != "auto":
        if not isinstance(requested, int) or requested < 1:
            raise InputError(f"model {name}: key 'gpus' must be a positive integer or 'auto', not {requested!r}")
        return requested
    dtype = spec.get("dtype") or runtime["dtype"]
    return gpus_needed(copies * spec["size_b"], dtype, runtime["device"], runtime["gpu_memory_gb"],
                       runtime["gpu_weights_share"])


def load_placement(device: str, gpus: int, free_bytes: Sequence[int]) -> dict:
    """from_pretrained's placement arguments for a model on `gpus` GPUs of `device`, given each
    visible GPU's free memory in bytes (index = CUDA device number).

    cpu: none (the model stays where it is built). One GPU: device_map = that device. N > 1 GPUs
    (device must be 'cuda'): device_map 'auto' with max_memory = the free memory of GPUs 0..N-1
    and nothing for the CPU or disk, so a model that does not fit fails instead of crawling.
    """
    if not device.startswith("cuda"):
        return {}
    if gpus == 1:
        return {"device_map": device}
    if device != "cuda":
        raise InputError(f"runtime.device {device!r} names one GPU, but the model asks for {gpus} GPUs: use 'cuda'")
    if gpus > len(free_bytes):
        raise InputError(f"the model asks for {gpus} GPUs, but {len(free_bytes)} are visible "
                         "(CUDA_VISIBLE_DEVICES, or the GPUs SLURM allocated)")
    return {"device_map": "auto", "max_memory": {index: int(free_bytes[index]) for index in range(gpus)}}
