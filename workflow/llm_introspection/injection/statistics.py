"""Statistics of the concept injection experiments, from their per-trial records (injection.py).

Rates come with Wilson score intervals, differences between independent rates (injected vs
control trials) with Newcombe's hybrid score interval (both from statsmodels), sensitivity d'
with the log-linear correction, and rates against chance with exact two-sided binomial tests
(scipy), Holm-adjusted twice: p_holm within a cell (the family: that cell's tests of one table) and
p_holm_sweep over the experiment's whole sweep (the family: one measure of one table across every
model, layer, vector method and strength), the one to cite when a cell is picked from the sweep. Every table is
tidy: one row per cell (model, layer, vector_method, strength_relative) and measure, with the
columns of MEASURE_COLUMNS, ready for CSV and (through json_ready) JSON.

Rates and Newcombe differences count trials as independent. The logit metric's and forced
identification's injected trials cross concepts with input variants (the same concept under
several wordings), so those intervals are narrower than the design warrants; their unsteered
controls are one forward pass per variant. Their headline differences therefore also come as
`<measure>_crossed` rows: concepts and variants as crossed random units (Clark's min F' as a t,
study.clustered.crossed_t_test), a t interval and p that generalise to new concepts and wordings
(coverage checked on simulated trials in tests/test_injection_statistics.py). Localization's injected, random and question-control trials
share their sentence sets, so the independent-samples interval of a margin is conservative when
they are positively correlated.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest, norm
from scipy.stats import t as student_t
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from ..registry import EXPERIMENTS
from ..storage import read_json, versions, write_csv, write_json
from ..study.clustered import crossed_t_test
from ..study.statistics import bootstrap_ci, holm

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

CELL = ("model", "layer", "vector_method", "strength_relative")
MEASURE_COLUMNS = (
    *CELL, "measure", "estimate", "low", "high", "successes", "n", "reference_successes", "reference_n",
    "chance", "p_value", "p_holm", "p_holm_sweep",
)

# --- intervals and tests ------------------------------------------------------------------------

def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion; NaN bounds when n is 0."""
    if n == 0:
        return float("nan"), float("nan")
    low, high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    return float(low), float(high)


def newcombe_difference(successes: int, n: int, reference_successes: int, reference_n: int,
                        confidence: float = 0.95) -> tuple[float, float, float]:
    """successes/n - reference_successes/reference_n and Newcombe's hybrid score interval (his
    method 10) for independent samples; NaN when a sample is empty."""
    if n == 0 or reference_n == 0:
        return float("nan"), float("nan"), float("nan")
    low, high = confint_proportions_2indep(successes, n, reference_successes, reference_n, method="newcomb",
                                           compare="diff", alpha=1 - confidence)
    return successes / n - reference_successes / reference_n, float(low), float(high)


def d_prime(hits: int, n_signal: int, false_alarms: int, n_noise: int,
            confidence: float = 0.95) -> tuple[float, float, float]:
    """d' = z(H) - z(F) and its normal-approximation interval, with the log-linear correction
    (Hautus 1995) on every cell: H = (hits + 0.5) / (n_signal + 1), F likewise, so rates of 0 or 1
    give finite values; the variance is Gourevitch & Galanter's (1967), H(1 - H) / (N phi(z(H))^2)
    + F(1 - F) / (N' phi(z(F))^2), with the corrected rates and counts (n + 1). NaN when a sample
    is empty."""
    if n_signal == 0 or n_noise == 0:
        return float("nan"), float("nan"), float("nan")
    rates = np.array([(hits + 0.5) / (n_signal + 1), (false_alarms + 0.5) / (n_noise + 1)])
    z = norm.ppf(rates)
    variance = float((rates * (1 - rates) / (np.array([n_signal + 1, n_noise + 1]) * norm.pdf(z) ** 2)).sum())
    estimate, half = float(z[0] - z[1]), float(norm.ppf(0.5 + confidence / 2) * np.sqrt(variance))
    return estimate, estimate - half, estimate + half


def binomial_p(successes: int, n: int, chance: float) -> float:
    """Exact two-sided binomial test of successes out of n against the rate `chance`."""
    return float(binomtest(int(successes), int(n), chance).pvalue) if n else float("nan")


def rate_row(measure: str, flags: ArrayLike, chance: float | None = None,
             confidence: float = 0.95) -> dict[str, Any]:
    """A rate measure from boolean flags: estimate, Wilson bounds, counts and, given a chance
    rate, the binomial test against it."""
    flags = np.asarray(flags, dtype=bool)
    successes, n = int(flags.sum()), int(flags.size)
    low, high = wilson_interval(successes, n, confidence)
    return {"measure": measure, "estimate": successes / n if n else float("nan"), "low": low, "high": high,
            "successes": successes, "n": n, "chance": chance,
            "p_value": binomial_p(successes, n, chance) if chance is not None else float("nan")}


def difference_row(measure: str, flags: ArrayLike, reference_flags: ArrayLike,
                   confidence: float = 0.95) -> dict[str, Any]:
    """The difference of two independent rates with Newcombe's interval."""
    flags, reference = np.asarray(flags, dtype=bool), np.asarray(reference_flags, dtype=bool)
    estimate, low, high = newcombe_difference(int(flags.sum()), flags.size, int(reference.sum()), reference.size,
                                              confidence)
    return {"measure": measure, "estimate": estimate, "low": low, "high": high, "successes": int(flags.sum()),
            "n": int(flags.size), "reference_successes": int(reference.sum()), "reference_n": int(reference.size)}


def crossed_difference_row(measure: str, trials: pd.DataFrame, reference: pd.DataFrame, flag: str,
                           shared_variants: bool, confidence: float = 0.95) -> dict[str, Any]:
    """The difference of two arms' rates of boolean column `flag`, concepts and variants crossed
    random units: per arm a concept x variant grid of rates (a reference arm without concepts, e.g.
    unsteered trials, counts for every concept), the estimate the mean over concepts of each
    concept's mean over variants, its variance the by-concept plus the by-variant part (paired by
    variant when `shared_variants`), a t interval with Satterthwaite's df (within [-1, 1]) and the
    two-sided p.
    NaN bounds and p when fewer than 2 concepts or variants, or no variance at all."""
    concepts = sorted(trials["concept"].dropna().unique())
    grids = []
    for arm in (trials, reference):
        rates = arm.assign(flag=arm[flag].astype(float)).groupby(["concept", "variant"], dropna=False)["flag"].mean()
        grid = rates.unstack("variant")
        if grid.index.isna().all():  # no concepts: the same variant rates for every concept
            grid = pd.DataFrame([grid.iloc[0].to_numpy()] * len(concepts), index=concepts, columns=grid.columns)
        grids.append(grid.reindex(concepts).to_numpy())
    row = {"measure": measure, "estimate": float("nan"), "low": float("nan"), "high": float("nan"),
           "successes": int(trials[flag].sum()), "n": len(trials), "reference_successes": int(reference[flag].sum()),
           "reference_n": len(reference), "p_value": float("nan")}
    if len(concepts) < 2 or min(grid.shape[1] for grid in grids) < 2:
        return row
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate, t, df, p = crossed_t_test(grids[0], grids[1], shared_variants)
    row["estimate"] = estimate
    if np.isfinite(t) and t != 0 and np.isfinite(df):
        half = abs(estimate / t) * student_t.ppf(0.5 + confidence / 2, df)
        row.update(low=max(estimate - half, -1.0), high=min(estimate + half, 1.0), p_value=p)
    return row


def d_prime_row(measure: str, hits: ArrayLike, false_alarms: ArrayLike,
                confidence: float = 0.95) -> dict[str, Any]:
    """d' of boolean hit flags (signal trials) against false-alarm flags (noise trials)."""
    hits, alarms = np.asarray(hits, dtype=bool), np.asarray(false_alarms, dtype=bool)
    estimate, low, high = d_prime(int(hits.sum()), hits.size, int(alarms.sum()), alarms.size, confidence)
    return {"measure": measure, "estimate": estimate, "low": low, "high": high, "successes": int(hits.sum()),
            "n": int(hits.size), "reference_successes": int(alarms.sum()), "reference_n": int(alarms.size)}


def mean_row(measure: str, values: ArrayLike, seed: int = 0, n_resamples: int = 10000) -> dict[str, Any]:
    """A mean with its percentile bootstrap interval (statistics.bootstrap_ci)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return {"measure": measure, "estimate": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    estimate, low, high = bootstrap_ci(values, np.mean, n_resamples=n_resamples, seed=seed)
    return {"measure": measure, "estimate": float(estimate), "low": float(low), "high": float(high), "n": values.size}


def _table(rows, extra=()):
    """Rows as a table of MEASURE_COLUMNS (+ extra), p-values Holm-adjusted within each cell
    (p_holm) and within each measure over all cells (p_holm_sweep)."""
    table = pd.DataFrame(rows).reindex(columns=[*MEASURE_COLUMNS, *extra])
    tested = table[table["p_value"].notna()]
    for column, family in (("p_holm", list(CELL)), ("p_holm_sweep", "measure")):
        table[column] = np.nan
        for _, index in tested.groupby(family, dropna=False).groups.items():
            table.loc[index, column] = holm(table.loc[index, "p_value"])[0]
    return table


def _cells(records):
    return records.groupby(list(CELL), sort=True, dropna=False)


def _flags(series):
    return series.astype(bool).to_numpy()


# --- experiments --------------------------------------------------------------------------------

def detection_logit_statistics(records: pd.DataFrame) -> pd.DataFrame:
    """Per cell, from run_detection_logits records (every trial its own forward pass): on the
    detection question, hit_rate (injected trials answering yes), false_alarm_rate (unsteered
    trials, one per wording, answering yes), hit_minus_false_alarm (Newcombe) and its _crossed row
    (concepts and wordings as random units, paired by wording), d_prime (log-linear
    correction), random_yes_rate (concept-like random vectors answering yes) and hit_minus_random;
    on the control questions (truthful answer no), the yes rate with a concept injected and
    unsteered and control_question_yes_bias, their difference: the yes-bias steering alone creates;
    low_mass_<arm>, the share of each arm's trials whose yes and no tokens held less than
    min_option_mass; and the mean P(yes) of injected and unsteered detection trials (bootstrap)."""
    rows = []
    for cell, group in _cells(records):
        detect, asked = group[group["question"] == "detect"], group[group["question"] == "control_question"]
        arms = {"injected": detect[detect["kind"] == "injected"], "random": detect[detect["kind"] == "random"],
                "control": detect[detect["kind"] == "control"],
                "control_question_injected": asked[asked["kind"] == "injected"],
                "control_question_unsteered": asked[asked["kind"] == "control"]}
        yes = {arm: _flags(trials["prediction"] == "yes") for arm, trials in arms.items()}
        part = [rate_row("hit_rate", yes["injected"]), rate_row("false_alarm_rate", yes["control"]),
                difference_row("hit_minus_false_alarm", yes["injected"], yes["control"]),
                crossed_difference_row("hit_minus_false_alarm_crossed", arms["injected"].assign(yes=yes["injected"]),
                                       arms["control"].assign(yes=yes["control"]), "yes", shared_variants=True),
                d_prime_row("d_prime", yes["injected"], yes["control"]),
                rate_row("random_yes_rate", yes["random"]),
                difference_row("hit_minus_random", yes["injected"], yes["random"]),
                rate_row("control_question_yes_injected", yes["control_question_injected"]),
                rate_row("control_question_yes_unsteered", yes["control_question_unsteered"]),
                difference_row("control_question_yes_bias", yes["control_question_injected"],
                               yes["control_question_unsteered"])]
        part += [rate_row(f"low_mass_{arm}", _flags(trials["low_mass"])) for arm, trials in arms.items()]
        part += [mean_row("mean_p_yes_injected", arms["injected"]["p_yes"]),
                 mean_row("mean_p_yes_control", arms["control"]["p_yes"])]
        rows += [dict(zip(CELL, cell)) | row for row in part]
    return _table(rows)


def detection_response_statistics(graded: pd.DataFrame) -> pd.DataFrame:
    """Per cell, from grade_responses records: a claim is a coherent, affirmative response.
    hit_rate (claims on injected trials), false_alarm_rate (on controls), their difference,
    identification_given_claim (identifies, among injected claims), detected_and_identified (all
    four criteria, among injected trials) and its difference from the false-alarm rate, and the
    coherence of each kind."""
    rows = []
    for cell, group in _cells(graded):
        injected, control = group[group["kind"] == "injected"], group[group["kind"] == "control"]
        hits = _flags(injected["coherent"]) & _flags(injected["affirmative"])
        alarms = _flags(control["coherent"]) & _flags(control["affirmative"])
        combined = _flags(injected["detected_and_identified"])
        part = [rate_row("hit_rate", hits), rate_row("false_alarm_rate", alarms),
                difference_row("hit_minus_false_alarm", hits, alarms),
                rate_row("identification_given_claim", _flags(injected["identifies"])[hits]),
                rate_row("detected_and_identified", combined),
                difference_row("detected_and_identified_minus_false_alarm", combined, alarms),
                rate_row("coherent_injected", _flags(injected["coherent"])),
                rate_row("coherent_control", _flags(control["coherent"]))]
        rows += [dict(zip(CELL, cell)) | row for row in part]
    return _table(rows)


def forced_identification_statistics(records: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per cell, from run_forced_identification records (every trial its own forward pass): the
    top-1 rate of the read concept among the candidates (binomial tests against 1/n_candidates) on
    the thought question injected (top1_injected) and unsteered (top1_control, one trial per
    wording), and under the leak request injected (top1_leak) and unsteered (top1_leak_control);
    top1_injected_minus_control, and top1_injected_minus_leak: how much more often the concept is
    named when asked about thoughts than when it merely leaks into the next word (Newcombe, and
    _crossed: concepts crossed with the thought wordings and the leak requests); the
    mean rank of the thought question's injected and unsteered trials and of the leak's injected
    trials (bootstrap)."""
    rows = []
    for cell, group in _cells(records):
        chance = 1 / int(group["n_candidates"].iloc[0])
        arms = {(question, kind): trials for (question, kind), trials in group.groupby(["question", "kind"])}
        top1 = {key: _flags(trials["top1"]) for key, trials in arms.items()}
        thought, leak = "forced_identification", "leak"
        part = [rate_row("top1_injected", top1[(thought, "injected")], chance),
                rate_row("top1_control", top1[(thought, "control")], chance),
                difference_row("top1_injected_minus_control", top1[(thought, "injected")], top1[(thought, "control")]),
                rate_row("top1_leak", top1[(leak, "injected")], chance),
                rate_row("top1_leak_control", top1[(leak, "control")], chance),
                difference_row("top1_injected_minus_leak", top1[(thought, "injected")], top1[(leak, "injected")]),
                crossed_difference_row("top1_injected_minus_leak_crossed", arms[(thought, "injected")],
                                       arms[(leak, "injected")], "top1", shared_variants=False),
                mean_row("mean_rank_injected", arms[(thought, "injected")]["rank"], seed),
                mean_row("mean_rank_control", arms[(thought, "control")]["rank"], seed),
                mean_row("mean_rank_leak", arms[(leak, "injected")]["rank"], seed)]
        rows += [dict(zip(CELL, cell)) | row for row in part]
    return _table(rows)


def thought_vs_text_statistics(records: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per cell, from run_thought_vs_text records: the injected concept's top-1 rate as the
    thought on injected and control trials (binomial tests against 1/n_candidates) and their
    difference; the exact-repeat rate of the sentence on each and their difference; and the change
    of the sentence's mean log-probability, injected minus control per trial (bootstrap)."""
    rows = []
    for cell, group in _cells(records):
        thought, text = group[group["question"] == "thought"], group[group["question"] == "text"]
        chance = 1 / int(thought["n_candidates"].iloc[0])
        top1 = {kind: _flags(thought.loc[thought["kind"] == kind, "top1"]) for kind in ("injected", "control")}
        exact = {kind: _flags(text.loc[text["kind"] == kind, "exact"]) for kind in ("injected", "control")}
        paired = text.pivot(index="trial", columns="kind", values="mean_logprob")
        part = [rate_row("thought_top1_injected", top1["injected"], chance),
                rate_row("thought_top1_control", top1["control"], chance),
                difference_row("thought_top1_injected_minus_control", top1["injected"], top1["control"]),
                rate_row("text_exact_injected", exact["injected"]), rate_row("text_exact_control", exact["control"]),
                difference_row("text_exact_injected_minus_control", exact["injected"], exact["control"]),
                mean_row("text_logprob_change", paired["injected"] - paired["control"], seed)]
        rows += [dict(zip(CELL, cell)) | row for row in part]
    return _table(rows)


def prefill_intent_statistics(records: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per cell, from run_prefill_intent records: the rate of claiming the prefilled word was
    intended with its own concept injected, with another concept injected (mismatched) and with
    nothing injected; the differences injected - control, mismatched - control and injected -
    mismatched; and the paired change of P(intended) from the control trial (bootstrap)."""
    kinds = ("injected", "mismatched", "control")
    rows = []
    for cell, group in _cells(records):
        intent = {kind: _flags(group.loc[group["kind"] == kind, "prediction"] == "yes") for kind in kinds}
        paired = group.pivot(index="trial", columns="kind", values="p_yes")
        part = [rate_row(f"intent_{kind}", intent[kind]) for kind in kinds]
        part += [difference_row(f"intent_{a}_minus_{b}", intent[a], intent[b])
                 for a, b in (("injected", "control"), ("mismatched", "control"), ("injected", "mismatched"))]
        part += [mean_row(f"p_intended_change_{kind}", paired[kind] - paired["control"], seed)
                 for kind in ("injected", "mismatched")]
        rows += [dict(zip(CELL, cell)) | row for row in part]
    return _table(rows)


def intentional_control_statistics(records: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per cell, from run_intentional_control records: the mean cosine similarity with the concept
    vector under each instruction, and the paired differences (per trial) think - dont_think,
    dont_think - neutral and think - neutral, with bootstrap intervals."""
    rows = []
    for cell, group in _cells(records):
        paired = group.pivot(index="trial", columns="question", values="cosine")
        part = [mean_row(f"cosine_{name}", paired[name], seed) for name in ("think", "dont_think", "neutral")]
        part += [mean_row(f"{a}_minus_{b}", paired[a] - paired[b], seed)
                 for a, b in (("think", "dont_think"), ("dont_think", "neutral"), ("think", "neutral"))]
        rows += [dict(zip(CELL, cell)) | row for row in part]
    return _table(rows)


def localization_statistics(records: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """From run_localization records, three tables:

    accuracy: per cell, question and kind (injected, random), the rate of answering the steered
    sentence, against chance 1/n_sentences (binomial test, Holm within the cell);
    margins: per cell, the introspection question's accuracy on injected trials minus that of each
    control (every other question on injected trials; the introspection question with random
    vectors), Newcombe intervals;
    answers: the full answer distribution per cell, question, kind and injected position (None
    for controls): count and share of each answered position, and its mean probability.
    """
    accuracy, margins, answers = [], [], []
    for cell, group in _cells(records):
        keys = dict(zip(CELL, cell))
        chance = 1 / int(group["n_sentences"].iloc[0])
        steered = group[group["kind"] != "control"]
        correct = {(q, k): _flags(rows["correct"]) for (q, k), rows in steered.groupby(["question", "kind"], sort=True)}
        for (question, kind), flags in correct.items():
            accuracy.append(keys | rate_row("accuracy", flags, chance) | {"question": question, "kind": kind})
        introspection = group.loc[group["introspection"].astype(bool), "question"].iloc[0]
        reference = correct[(introspection, "injected")]
        for (question, kind), flags in correct.items():
            if (question, kind) != (introspection, "injected"):
                margins.append(keys | difference_row("margin", reference, flags) | {"question": question, "kind": kind})
        answers += _answer_distribution(group, keys)
    extra = ("question", "kind")
    return {"accuracy": _table(accuracy, extra), "margins": _table(margins, extra), "answers": pd.DataFrame(answers)}


def _answer_distribution(group, keys):
    rows = []
    positions = group["injected_position"].astype("Int64")  # None (controls) becomes <NA>
    for (question, kind, position), trials in group.groupby(["question", "kind", positions], sort=True, dropna=False):
        n = int(group["n_sentences"].iloc[0])
        counts = np.bincount(trials["prediction"].to_numpy(dtype=int) - 1, minlength=n)
        mean_probs = np.mean(np.stack(trials["answer_probs"].to_numpy()), axis=0)
        for answer in range(1, n + 1):
            rows.append(keys | {
                "question": question, "kind": kind, "injected_position": None if pd.isna(position) else int(position),
                "answer": answer, "count": int(counts[answer - 1]), "share": counts[answer - 1] / len(trials),
                "mean_prob": float(mean_probs[answer - 1]), "n": len(trials),
            })
    return rows


def json_ready(tables: Mapping[str, pd.DataFrame]) -> dict[str, list[dict[str, Any]]]:
    """A dict of tables as JSON-ready lists of records (NaN becomes null)."""
    return {name: json.loads(table.to_json(orient="records")) for name, table in tables.items()}


def read_records(paths: Iterable[Path | str]) -> pd.DataFrame:
    """The records of the given record files (injection.write_records) as one table."""
    return pd.DataFrame([record for path in paths for record in read_json(path)["records"]])


def experiment_tables(experiment: str, records: pd.DataFrame, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The statistics tables of one experiment's records, by output name (injection_<name>.csv),
    from the statistics function the registry names."""
    spec = EXPERIMENTS[experiment]
    function = globals()[spec.statistics]
    result = function(records, seed) if spec.statistics_seeded else function(records)
    if spec.tables:
        return {output: result[key] for output, key in spec.tables.items()}
    return {experiment: result}


def run_injection_statistics(inputs: Mapping[str, Sequence[Path | str]], outputs: Mapping[str, Path | str],
                             seed: int) -> None:
    """injection_<table>.csv for every table of every experiment (`inputs`: experiment -> record
    files; detection_responses -> graded files) and injection_statistics.json with all of them."""
    tables, sources = {}, {}
    for experiment, paths in inputs.items():
        records = read_records(paths)
        tables |= experiment_tables(experiment, records, seed)
        sources[experiment] = {"files": len(paths), "records": len(records)}
    for name, table in tables.items():
        write_csv(outputs[name], table)
    write_json(outputs["summary"], {"seed": seed, "sources": sources, "versions": versions(), "tables": json_ready(tables)})
