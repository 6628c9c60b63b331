"""Progress lines of long model jobs, and the plan's numbers beside the actual ones at the end.

A job that samples or traces for an hour writes a line at least every `interval_s` seconds (its
batch, the step of the batch's maximum, the live sequences, tokens/s and an ETA). Torch-free.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """'1h02m', '4m05s' or '12s'."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Counts the sequences and tokens of a job and logs a line when `interval_s` has passed.

    `total` is the job's number of sequences (completions sampled or traced). The ETA assumes the
    remaining sequences go at the rate of those done so far, the current batch counted by its
    steps."""

    def __init__(self, what: str, total: int, interval_s: float = 30.0, log: Callable[[str], None] = _log,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.total, self.interval_s, self.log, self.clock = what, total, interval_s, log, clock
        self.started = self.last = clock()
        self.done = self.tokens = self.batch_index = self.batch_size = 0
        self.lines = 0

    def start_batch(self, size: int) -> None:
        self.batch_index += 1
        self.batch_size = size

    def step(self, step: int, max_steps: int, live: int, new_tokens: int) -> None:
        """After step `step` (0-based) of at most `max_steps`: `live` sequences still running,
        `new_tokens` drawn (or teacher-forced) in this step."""
        self.tokens += new_tokens
        now = self.clock()
        if now - self.last < self.interval_s:
            return
        self.last = now
        elapsed = now - self.started
        fraction = (self.done + self.batch_size * (step + 1) / max_steps) / self.total if self.total else 1.0
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else float("nan")
        self.lines += 1
        self.log(
            f"{self.what}: batch {self.batch_index} ({self.batch_size} sequences), step {step + 1}/{max_steps}, "
            f"{live} live, {self.done}/{self.total} sequences done, {self.tokens / elapsed:.1f} tok/s, "
            f"ETA {duration(eta)}"
        )

    def end_batch(self, size: int) -> None:
        self.done += size

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started


def compare_with_plan(what: str, planned: dict, actual: dict) -> str:
    """One line of the plan's numbers beside the actual ones (keys in both; numbers formatted)."""
    parts = []
    for key in planned:
        if key in actual:
            parts.append(f"{key} planned {_number(planned[key])}, actual {_number(actual[key])}")
    return f"{what} plan vs actual: " + "; ".join(parts)


def _number(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
