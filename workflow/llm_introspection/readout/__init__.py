"""Read-outs shared by the judge, the grader and the experiments: option probabilities after a
prefill (options) and steered read-outs and sampling (steered)."""

from .options import (
    AnswerFrame, answer_frame, first_token_ids, next_token_log_probs, option_answers, option_log_probs,
    option_token_ids, truncate_completion,
)
from .steered import Trial, continuation_cosines, read_continuations, read_options, sample_trials

__all__ = [
    "AnswerFrame", "Trial", "answer_frame", "continuation_cosines", "first_token_ids", "next_token_log_probs",
    "option_answers", "option_log_probs", "option_token_ids", "read_continuations", "read_options",
    "sample_trials", "truncate_completion",
]
