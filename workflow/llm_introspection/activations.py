"""The activation files' contract: which positions a trace keeps (trace.positions) and how they
are written. Every file has, per group, the mean over its positions (float32): what the probes
and embeddings read, whatever the positions kept.

Layout of results/activations*/{model}/{prompt}.h5 (attributes `positions` and `last_k` say which):
  prompt/token_ids               the prompt's ids
  prompt/mean_hidden_states      (layer, d) float32, mean over the prompt's positions without the
                                 attention sink (attr n_pooled_positions)
  prompt/last_hidden_states      (layer, d) float32, the prompt's last position
  prompt/hidden_states           (layer, prompt_length, d), positions 'all' only
  rep_NN/token_ids               the completion's ids (attrs rep, seed, stop_reason)
  rep_NN/mean_hidden_states      (layer, d) float32, mean over every completion position
  rep_NN/hidden_states           (layer, kept, d): every position ('all', 'response') or the last
                                 last_k ('last_k'; attr first_position: the index in the completion
                                 of the first one kept); absent with 'pooled'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .storage import atomic_h5, set_attrs, versions

POSITIONS = ("all", "response", "last_k", "pooled")
ATTENTION_SINK = 0
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def hidden_state_indices(fractions: list[float], n_layers: int) -> list[int]:
    """Hidden-state indices round(f * n_layers) for each fraction, sorted and unique."""
    return sorted({int(round(f * n_layers)) for f in fractions})


def kept_positions(positions: str, last_k: int, completion_tokens: int) -> int:
    """How many of a completion's positions an activation file keeps."""
    return {"all": completion_tokens, "response": completion_tokens, "pooled": 0}.get(
        positions, min(last_k, completion_tokens))


def reduce_states(prompt_states: np.ndarray, completion_states: list, positions: str, last_k: int) -> dict:
    """One prompt's traced states as the activation file keeps them (see the module docstring):
    {'prompt': {...}, 'reps': [{...}, ...]}, each with mean_hidden_states and, where kept,
    hidden_states (and first_position)."""
    if positions not in POSITIONS:
        raise ValueError(f"unknown trace.positions {positions!r}: use one of {POSITIONS}")
    pooled = np.delete(prompt_states, ATTENTION_SINK, axis=1)
    prompt = {"mean_hidden_states": pooled.mean(axis=1) if pooled.shape[1] else np.zeros_like(prompt_states[:, 0]),
              "n_pooled_positions": pooled.shape[1], "last_hidden_states": prompt_states[:, -1]}
    if positions == "all":
        prompt["hidden_states"] = prompt_states
    reps = []
    for states in completion_states:
        rep = {"mean_hidden_states": states.mean(axis=1)}
        if positions in ("all", "response"):
            rep.update(hidden_states=states, first_position=0)
        elif positions == "last_k":
            first = max(0, states.shape[1] - last_k)
            rep.update(hidden_states=states[:, first:], first_position=first)
        reps.append(rep)
    return {"prompt": prompt, "reps": reps}


def storage_dtype(reduced: dict) -> type:
    """float16 unless a kept position exceeds its range (Gemma-3's attention sink does): float32."""
    kept = [g["hidden_states"] for g in (reduced["prompt"], *reduced["reps"]) if "hidden_states" in g]
    overflow = any(float(np.abs(a).max()) > _FLOAT16_MAX for a in kept)
    return np.float32 if overflow else np.float16


DESCRIPTION = (
    "Residual stream from one teacher-forced pass over prompt + completion, at hidden-state indices "
    "`hidden_state_indices` (0 = embedding output, h = output of block h-1 before the final norm), as "
    "(layer, position, d). Every group has mean_hidden_states (layer, d) float32: the completion's mean over "
    "all its positions; the prompt's mean without the attention sink (position 0, norm far above the rest; "
    "attr n_pooled_positions), beside prompt/last_hidden_states (its last position). hidden_states keeps "
    "the positions that attribute `positions` says: 'all' (prompt and completion), 'response' (completion "
    "only), 'last_k' (the completion's last `last_k`, from attr first_position), 'pooled' (none). Absolute "
    "position of completion index i = prompt length + i. Kept positions are float16 unless a value exceeds "
    "float16's range (then float32: storage_dtype)."
)


def write_activations(path: Path | str, generation: dict, record: dict, indices: list, fractions: list, reduced: dict,
                      trace: dict, batching: dict) -> None:
    """One activation file (atomic), with its provenance: the reading and the writing model, the
    prompt, the generation settings, the positions kept and the batching of the trace job."""
    storage = storage_dtype(reduced)
    with atomic_h5(path) as h5:
        set_attrs(h5, {
            "study": generation["study"], "model": record, "generation_model": generation["model"],
            "prompt_id": generation["prompt"]["id"], "prompt_type": generation["prompt"]["type"],
            "generation": generation["generation"], "versions": versions(),
            "hidden_state_indices": indices, "layer_fractions": fractions,
            "storage_dtype": np.dtype(storage).name, "attention_sink_position": ATTENTION_SINK,
            "positions": trace["positions"], "last_k": trace["last_k"] if trace["positions"] == "last_k" else None,
            "batching": batching,
        })
        h5.attrs["description"] = DESCRIPTION
        prompt = h5.create_group("prompt")
        _write_group(prompt, reduced["prompt"], storage)
        prompt.attrs["n_pooled_positions"] = reduced["prompt"]["n_pooled_positions"]
        prompt.create_dataset("last_hidden_states", data=reduced["prompt"]["last_hidden_states"].astype(np.float32))
        prompt.create_dataset("token_ids", data=np.array(generation["prompt"]["token_ids"], dtype=np.int64))
        for rep, states in zip(generation["reps"], reduced["reps"]):
            group = h5.create_group(f"rep_{rep['rep']:02d}")
            set_attrs(group, {"rep": rep["rep"], "seed": rep["seed"], "stop_reason": rep["stop_reason"]})
            _write_group(group, states, storage)
            if "first_position" in states:
                group.attrs["first_position"] = states["first_position"]
            group.create_dataset("token_ids", data=np.array(rep["token_ids"], dtype=np.int64))


def _write_group(group, states: dict, storage) -> None:
    group.create_dataset("mean_hidden_states", data=states["mean_hidden_states"].astype(np.float32))
    if "hidden_states" in states:
        group.create_dataset("hidden_states", data=states["hidden_states"].astype(storage))
