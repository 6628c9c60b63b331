"""Memory plans of the model jobs, from a model's config alone (torch-free: the plan command and
the Snakefile's helpers import it without loading any weights).

A job holds its weights, plus per sequence of a batch: the key/value cache of (prompt + new
tokens) positions, layers x kv heads x head dim x 2 (keys and values) x dtype bytes per position,
and the transient work of one forward pass (the MLP and attention of one layer over the positions
it computes, the full-vocabulary float32 work of sampling one token, the hidden states a trace
captures). `largest_batch` is the most sequences whose bytes fit a budget: the free GPU memory
after loading (torch.cuda.mem_get_info) or, on the CPU, runtime.memory_budget_gb minus the
weights. Every figure here is an upper bound by design; the job records the plan beside what it
used (see `BatchRecord`).
"""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Copies of one row of full-vocabulary float32 logits that sampling holds at once (logits, softmax,
# log-softmax, its exp, the nucleus sort/top-k values and ids, cumulative sums).
_SAMPLING_VOCAB_COPIES = 8
# Hidden-size wide tensors a decoder layer holds at once per position (residual, normed input,
# attention output, q) and intermediate-size ones (gate, up, activation).
_HIDDEN_COPIES, _INTERMEDIATE_COPIES = 4, 3


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on, as a model's config.json states it."""

    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int
    tied_embeddings: bool = False

    @property
    def n_params(self) -> int:
        """Parameters of a dense decoder of this shape (embeddings, attention, gated MLP, norms)."""
        attention = 2 * self.hidden_size * self.n_heads * self.head_dim + 2 * self.hidden_size * self.n_kv_heads * self.head_dim
        mlp = 3 * self.hidden_size * self.intermediate_size
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)
        return self.n_layers * (attention + mlp + 2 * self.hidden_size) + embeddings + self.hidden_size


def shape_from_config(config: dict) -> ModelShape:
    """The shape in a transformers config dict (a multimodal config's text_config when it has one)."""
    if "num_hidden_layers" not in config and "text_config" in config:
        config = config["text_config"]
    heads = config["num_attention_heads"]
    return ModelShape(
        n_layers=config["num_hidden_layers"], hidden_size=config["hidden_size"], n_heads=heads,
        n_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        vocab_size=config["vocab_size"], intermediate_size=config["intermediate_size"],
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def weight_bytes(shape: ModelShape, dtype_bytes: int) -> int:
    return shape.n_params * dtype_bytes


def kv_bytes_per_token(shape: ModelShape, dtype_bytes: int) -> int:
    """Key/value cache bytes of one position of one sequence."""
    return shape.n_layers * shape.n_kv_heads * shape.head_dim * 2 * dtype_bytes


def _layer_work(shape: ModelShape, positions: int, context: int, dtype_bytes: int) -> int:
    """Transient bytes of one decoder layer over `positions` new positions attending to `context`
    (eager attention's float32 scores included: the worst case)."""
    width = _HIDDEN_COPIES * shape.hidden_size + _INTERMEDIATE_COPIES * shape.intermediate_size
    return positions * width * dtype_bytes + shape.n_heads * positions * context * 4


def generate_bytes_per_sequence(shape: ModelShape, prompt_tokens: int, new_tokens: int, dtype_bytes: int) -> int:
    """One sampled sequence: its cache of prompt + new tokens (plus one layer's copy while the cache
    grows), the prefill's layer work and sampling's full-vocabulary float32 rows."""
    cache = (prompt_tokens + new_tokens) * kv_bytes_per_token(shape, dtype_bytes)
    growth = cache // shape.n_layers
    prefill = _layer_work(shape, prompt_tokens, prompt_tokens, dtype_bytes)
    sampling = _SAMPLING_VOCAB_COPIES * shape.vocab_size * 4
    return cache + growth + prefill + sampling


def trace_bytes_per_sequence(shape: ModelShape, prompt_tokens: int, completion_tokens: int, dtype_bytes: int,
                             n_captured: int) -> int:
    """One teacher-forced completion: the cache of prompt + completion, the completion pass's layer
    work and the captured hidden states (in the model's dtype, and their float32 stack)."""
    cache = (prompt_tokens + completion_tokens) * kv_bytes_per_token(shape, dtype_bytes)
    work = _layer_work(shape, completion_tokens, prompt_tokens + completion_tokens, dtype_bytes)
    captured = n_captured * completion_tokens * shape.hidden_size * (dtype_bytes + 4)
    return cache + work + captured


def largest_batch(per_sequence: int, budget: int, fraction: float = 0.9) -> int:
    """The most sequences of `per_sequence` bytes in `fraction` of `budget` bytes (at least 1)."""
    return max(1, math.floor(fraction * budget / per_sequence)) if per_sequence > 0 else 1


@dataclass
class BatchRecord:
    """What a job planned and did, for its outputs' provenance: `configured` (the config's
    batch_size), `planned` (the batch the memory plan allows, None without a budget), `budget`
    (bytes, and where the figure came from), `per_sequence` (planned bytes), `start` (the batch
    the job began with: min of configured and planned), `backoffs` (each out-of-memory halving:
    at which sequence, from, to) and `used` (the batch sizes the job actually ran, in order)."""

    configured: int
    planned: int | None = None
    budget_bytes: int | None = None
    budget_source: str = "none"
    per_sequence_bytes: int | None = None
    backoffs: list = field(default_factory=list)
    used: list = field(default_factory=list)

    @property
    def start(self) -> int:
        return min(self.configured, self.planned) if self.planned else self.configured

    def as_dict(self) -> dict:
        return asdict(self) | {"start": self.start}


def plan_record(configured: int, per_sequence: int, budget: int | None, source: str, fraction: float) -> BatchRecord:
    """A BatchRecord for a job with `budget` bytes (None: no budget, the configured batch)."""
    if budget is None:
        return BatchRecord(configured, per_sequence_bytes=per_sequence)
    return BatchRecord(configured, largest_batch(per_sequence, budget, fraction), budget, source, per_sequence)


def scaled_rate(tokens_per_s: float, size_b: float, reference_size_b: float) -> float:
    """A throughput given for a model of reference_size_b, for one of size_b (inverse in size:
    decoding reads every weight each step), within 0.25-4x of the reference."""
    return tokens_per_s * min(4.0, max(0.25, reference_size_b / size_b))


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA's OutOfMemoryError and the CPU allocator's failure."""
    if type(error).__name__ == "OutOfMemoryError":
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def run_with_backoff(n_items: int, record: BatchRecord, run: Callable[[int, int], list],
                     release: Callable[[], None] = lambda: None) -> list:
    """run(start, end) over items [0, n_items) in batches of record.start; on an out-of-memory error
    the failed batch is released (`release`, e.g. torch.cuda.empty_cache), halved and run again,
    and the job goes on at the halved size. Each halving and each batch run is recorded."""
    results, start, size = [], 0, record.start
    while start < n_items:
        end = min(n_items, start + size)
        try:
            results += run(start, end)
        except Exception as error:
            if not is_out_of_memory(error) or end - start == 1:
                raise
            release()
            size = (end - start) // 2
            record.backoffs.append({"at_sequence": start, "from": end - start, "to": size})
            continue
        record.used.append(end - start)
        start = end
    return results


def gigabytes(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB"
