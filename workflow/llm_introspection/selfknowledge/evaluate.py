"""The self-knowledge evaluations on a loaded model: each returns one record per item (question x
answer pair, task x property, prompt), the unit its statistics resample.

Every input is a one-turn conversation rendered as the model reads it (its chat template when it
is an instruct model in its native frame, else a plain transcript: prompts.render_conversation).
Answers are greedy (model.generate without sampling, no scores kept); option probabilities come
from one forward pass per sequence (readout.options), whose full-vocabulary logits live for that
batch only. Detection reads the finetuning rules' steer-then-remove examples
(finetune.steer_remove.read_answers).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..batching import PAD_ID, left_pad
from ..errors import InputError
from ..finetune.design import Variant, steered_option
from ..finetune.steer_remove import read_answers
from ..injection.inputs import answer_start, conversation_ids, option_frame
from ..injection.texts import AnswerSpec
from ..prompts import TEMPLATE_DATE, TRANSCRIPT_LABELS, encode, uses_chat_template
from ..readout.options import option_answers, option_log_probs
from ..sampling import answer_end, eos_token_ids
from .scoring import answer_property, parse_number, parse_report, predicted_property, report_distribution, words
from .scoring import restricted_kl
from .texts import Questions, Tasks, hypothetical

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TOP_K = 5


def is_chat(record: dict) -> bool:
    """Whether the model reads its chat template (instruct, native frame)."""
    return uses_chat_template(record["variant"], record["frame"])


def prompt_ids(tokenizer: PreTrainedTokenizerBase, message: str, chat: bool, path: Path | str,
               prefill: str = "", template_date: str | None = TEMPLATE_DATE) -> list[int]:
    """Token ids of a one-turn conversation up to the answer (and `prefill`, as it follows it), a
    chat template rendered as on `template_date`."""
    return conversation_ids(tokenizer, [message], chat, [], prefill, path, template_date=template_date)[0]


@torch.inference_mode()
def _greedy_batch(model, sequences, max_new_tokens, eos):
    """Greedy token ids per sequence of one left-padded batch, KV-cached, up to its first eos
    (inclusive) or max_new_tokens; only the last position's logits are computed."""
    from transformers import DynamicCache

    ids, mask, positions = left_pad(sequences, PAD_ID, model.device)
    eos_ids = torch.tensor(sorted(eos), device=model.device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                past_key_values=DynamicCache(config=model.config), logits_to_keep=1)
    finished = torch.zeros(len(sequences), dtype=torch.bool, device=model.device)
    tokens = []
    for step in range(max_new_tokens):
        token = torch.where(finished, PAD_ID, out.logits[:, -1].argmax(-1))
        tokens.append(token)
        finished |= torch.isin(token, eos_ids)
        if bool(finished.all()) or step + 1 == max_new_tokens:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                    past_key_values=out.past_key_values, logits_to_keep=1)
    return torch.stack(tokens, dim=1).tolist()


def greedy_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sequences: list[list[int]],
                   max_new_tokens: int, batch_size: int, chat: bool) -> list[tuple[str, bool]]:
    """(answer text, truncated) per sequence: greedy decoding, batched longest first, stopped at the
    model's end of turn; a plain transcript's answer is cut where a line starts the next turn
    ("User:"/"Assistant:"). `truncated`: the answer reached max_new_tokens unfinished."""
    eos = eos_token_ids(model, tokenizer)
    labels = () if chat else tuple(TRANSCRIPT_LABELS.values())
    results = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        for row, generated in zip(rows, _greedy_batch(model, [sequences[i] for i in rows], max_new_tokens, eos)):
            ended = [k for k, token in enumerate(generated) if token in eos]
            kept = generated[: ended[0]] if ended else generated
            text = tokenizer.decode(kept, skip_special_tokens=True)
            cut = answer_end(text, labels) if labels else None
            results[row] = ((text[:cut] if cut is not None else text).strip(), not ended and cut is None)
    return results


def run_answer_shift(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, record: dict, questions: Questions,
                     answer_pairs: Iterable[tuple[str, str]], batch_size: int,
                     template_date: str | None = TEMPLATE_DATE) -> list[dict]:
    """P(A) vs P(B) after the prefill, for every question under every answer pair (A stands for
    yes): per record p_a (renormalised over the pair), both log-probabilities and the pair's mass."""
    chat = is_chat(record)
    records = []
    for a, b in answer_pairs:
        spec = AnswerSpec(questions.path, questions.prefill, questions.separator, (a, b))
        frame = option_frame(tokenizer, spec, chat)
        sequences = [prompt_ids(tokenizer, f"{q.text}\n\n{questions.instruction.format(a=a, b=b)}", chat,
                                questions.path, frame.prefill, template_date=template_date)
                     for q in questions.questions]
        log_probs = option_log_probs(model, tokenizer, sequences, frame.option_ids, batch_size,
                                     "the questions' length")
        probs, _, mass = option_answers(log_probs)
        for q, p, lp, m in zip(questions.questions, probs, log_probs.numpy(), mass):
            records.append({"item": q.id, "category": q.category, "group": q.group, "question": q.text,
                            "pair": f"{a}/{b}", "option_a": a, "option_b": b, "p_a": float(p[0]),
                            "log_p_a": float(lp[0]), "log_p_b": float(lp[1]), "option_mass": float(m)})
    return records


def _first_per_kind(items, n):
    counts, kept = {}, []
    for item in items:
        counts[item.kind] = counts.get(item.kind, 0) + 1
        if n is None or counts[item.kind] <= n:
            kept.append(item)
    return kept


def run_self_prediction(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, record: dict, tasks: Tasks,
                        n_items: int | None, max_new_tokens: int, batch_size: int,
                        template_date: str | None = TEMPLATE_DATE) -> list[dict]:
    """Binder-style: the greedy object-level answer of each task (the first `n_items` of each kind),
    then per property of its kind the greedy answer to the hypothetical; `correct` compares the
    prediction with the property of the actual answer (None when the answer lacks the property)."""
    chat = is_chat(record)

    def ids(message):
        return prompt_ids(tokenizer, message, chat, tasks.path, template_date=template_date)

    items = _first_per_kind(tasks.self_prediction, n_items)
    objects = greedy_answers(model, tokenizer, [ids(t.prompt) for t in items], max_new_tokens, batch_size, chat)
    asks = [(t, o, p) for t, o in zip(items, objects) for p in tasks.kind_properties[t.kind]]
    sequences = [ids(hypothetical(tasks, t.prompt, tasks.property_questions[p])) for t, _, p in asks]
    answers = greedy_answers(model, tokenizer, sequences, max_new_tokens, batch_size, chat)
    records = []
    for (task, (text, truncated), prop), (answer, _) in zip(asks, answers):
        actual, predicted = answer_property(text, prop), predicted_property(answer, prop)
        records.append({"item": task.id, "kind": task.kind, "property": prop, "object_answer": text,
                        "object_truncated": truncated, "actual": actual, "hypothetical_answer": answer,
                        "predicted": predicted, "correct": None if actual is None else predicted == actual})
    return records


def answer_token(tokenizer: PreTrainedTokenizerBase, word: str, chat: bool) -> int:
    """The first token of `word` as the first token of an answer (after a space in a transcript)."""
    return encode(tokenizer, answer_start(word, chat))[0]


@torch.inference_mode()
def _next_token_probs(model, sequences, wanted, batch_size):
    """Per sequence: the top-5 next-token (ids, probabilities) and the probability of each id of
    wanted[i], from the exact softmax at T=1 (the vocabulary's logits live for one batch only)."""
    out = [None] * len(sequences)
    for start in range(0, len(sequences), batch_size):
        rows = list(range(start, min(start + batch_size, len(sequences))))
        ids, mask, positions = left_pad([sequences[i] for i in rows], PAD_ID, model.device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                       logits_to_keep=1).logits[:, -1].float()
        probs = torch.softmax(logits, dim=-1)
        top = probs.topk(TOP_K, dim=-1)
        for k, row in enumerate(rows):
            extra = torch.tensor(sorted(wanted[row]), dtype=torch.long, device=probs.device)
            out[row] = ([int(i) for i in top.indices[k]], [float(p) for p in top.values[k]],
                        dict(zip(extra.tolist(), probs[k, extra].double().tolist())))
    return out


def run_calibration(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, record: dict, tasks: Tasks,
                    n_items: int | None, max_new_tokens: int, batch_size: int,
                    template_date: str | None = TEMPLATE_DATE) -> list[dict]:
    """The exact next-token distribution at the start of the answer to each prompt against the
    model's verbal report of its top-5 (greedy answer to the hypothetical): restricted KL
    (scoring.restricted_kl, on the first tokens of the reported words and the model's top-5),
    top-5 overlap (of token ids, out of 5) and top-1 match."""
    chat = is_chat(record)

    def ids(message):
        return prompt_ids(tokenizer, message, chat, tasks.path, template_date=template_date)

    items = list(tasks.calibration[:n_items])
    reports = greedy_answers(model, tokenizer, [ids(hypothetical(tasks, i.prompt, tasks.calibration_report))
                                                for i in items], max_new_tokens, batch_size, chat)
    parsed = [parse_report(text) for text, _ in reports]
    tokens = [[answer_token(tokenizer, w, chat) for w, _ in report] for report in parsed]
    sequences = [ids(i.prompt) for i in items]
    exact = _next_token_probs(model, sequences, [set(t) for t in tokens], batch_size)
    records = []
    for item, (text, truncated), report, ids, (top_ids, top_probs, reported_probs) in zip(
            items, reports, parsed, tokens, exact):
        model_probs = dict(zip(top_ids, top_probs)) | reported_probs
        stated = report_distribution([(token, p) for token, (_, p) in zip(ids, report)])
        records.append({
            "item": item.id, "report": text, "report_truncated": truncated, "reported_words": [w for w, _ in report],
            "reported_percents": [p for _, p in report], "n_reported": len(report),
            "top_tokens": [tokenizer.decode([i]) for i in top_ids], "top_probs": top_probs,
            "kl": restricted_kl(model_probs, stated) if report else float("nan"),
            "top5_overlap": len(set(ids) & set(top_ids)) / TOP_K,
            "top1_match": bool(ids) and ids[0] == top_ids[0],
            "reported_mass": float(sum(reported_probs.values())),
        })
    return records


def run_length_prediction(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, record: dict, tasks: Tasks,
                          n_items: int | None, max_new_tokens: int, batch_size: int,
                          template_date: str | None = TEMPLATE_DATE) -> list[dict]:
    """The greedy answer's length in words against the model's predicted length (absolute error;
    None when it wrote no number) and its first word against the predicted first word. The two
    hypothetical answers start with the tasks file's prefills; `length_answer` and
    `first_word_answer` are what the model wrote after them."""
    chat = is_chat(record)

    def ids(message, prefill=""):
        return prompt_ids(tokenizer, message, chat, tasks.path, prefill, template_date=template_date)

    items = list(tasks.length_prediction[:n_items])
    actual = greedy_answers(model, tokenizer, [ids(i.prompt) for i in items], max_new_tokens, batch_size, chat)
    questions = [ids(q, prefill) for i in items for q, prefill in (
        (hypothetical(tasks, i.prompt, tasks.length_question), tasks.length_prefill),
        (hypothetical(tasks, i.prompt, tasks.first_word_question), tasks.first_word_prefill))]
    answers = greedy_answers(model, tokenizer, questions, max_new_tokens, batch_size, chat)
    records = []
    for k, (item, (text, truncated)) in enumerate(zip(items, actual)):
        (length_answer, _), (first_answer, _) = answers[2 * k], answers[2 * k + 1]
        n_words, predicted = len(words(text)), parse_number(length_answer)
        first, guess = (words(text) or [None])[0], (words(first_answer) or [None])[0]
        records.append({"item": item.id, "answer": text, "truncated": truncated, "actual_words": n_words,
                        "length_answer": length_answer, "predicted_words": predicted,
                        "abs_error": float(abs(predicted - n_words)) if predicted is not None else np.nan,
                        "first_word": first, "first_word_answer": first_answer, "predicted_first_word": guess,
                        "first_word_correct": first is not None and guess == first})
    return records


def run_detection(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, record: dict, data: list[dict],
                  batch_size: int, template_date: str | None = TEMPLATE_DATE) -> list[dict]:
    """Steer-then-remove detection: every example of each detection data set (`data`: per variant,
    its `variant` name, its `splits` (split -> the detection data file's content) and its
    `directions` (pool -> unit directions)) read as finetune.steer_remove.read_answers reads it, one
    record per trial. `said_yes`: the model chose the option that says "steered" in that variant's
    answers (finetune.design.steered_option: "yes" for the original, "no" for flipped labels, the
    pair's first option, e.g. Red, for a neutral pair), by the larger of the two options'
    log-probabilities; `matches_label`: it chose the example's label (what training targeted,
    corrupted labels included). InputError when the model's tokenizer or template differs from the
    one the data were written with, or its chat template would print another date (`template_date`:
    the data are read as rendered, not rendered again)."""
    records = []
    for entry in data:
        for split, content in entry["splits"].items():
            variant = Variant(**content["variant"])
            where = f"detection data of variant {variant.name}, split {split} (made on {content['model']['name']})"
            if tokenizer.convert_ids_to_tokens(content["option_ids"]) != content["option_tokens"]:
                raise InputError(f"{where}: the option ids read {tokenizer.convert_ids_to_tokens(content['option_ids'])} "
                                 f"with this model's tokenizer, not {content['option_tokens']}")
            if is_chat(record) != is_chat(content["model"]):
                raise InputError(f"{where}: the data were rendered {'with' if is_chat(content['model']) else 'without'} "
                                 f"the chat template, and model {record['name']} reads "
                                 f"{'it' if is_chat(record) else 'a plain transcript'}")
            if is_chat(record) and content["model"].get("template_date") != template_date:
                raise InputError(f"{where}: the data were rendered as on {content['model'].get('template_date')!r}, "
                                 f"not as on {template_date!r} (config key prompts.template_date)")
            examples = content["examples"]
            log_probs = read_answers(model, examples, content["question_ids"], entry["directions"],
                                     content["option_ids"], batch_size)
            yes = steered_option(variant)
            options = content["options"]
            for example, (log_a, log_b) in zip(examples, log_probs):
                chose = 0 if log_a >= log_b else 1
                mass = float(np.exp(log_a) + np.exp(log_b))
                records.append({
                    "item": f"{variant.name}/{split}/{example['index']}", "pair": variant.name, "split": split,
                    "index": example["index"], "direction_kind": content["direction_kind"],
                    "direction_set": example["direction_set"], "direction": example["direction"],
                    "magnitude": example["magnitude"], "layer_range": example["layer_range"],
                    "design_steered": example["design_steered"], "steered": example["steered"],
                    "label": example["label"], "corrupted": example["corrupted"], "option_a": options[0],
                    "option_b": options[1], "steered_answer": options[yes], "log_p_a": float(log_a),
                    "log_p_b": float(log_b), "p_a": float(np.exp(log_a) / mass), "option_mass": mass,
                    "chose": options[chose], "said_yes": chose == yes, "matches_label": chose == example["label"],
                })
    return records
