"""The answer: local search's budget reduction factor per gate, worded by what its interval supports, with
the paired difference beside it.

The wording rule:
- the factor is the headline ("needs 3.2x [90% interval 1.4, 8] fewer trials") only when its bootstrap
  interval excludes 1; a censored factor ("> 6.4x (censored)") is a claim too and obeys the same rule;
- an interval that contains 1 reads "no detectable difference in the tuning budget", the factor in brackets;
- a factor without an interval (running best over seeds) is given but said to be no claim;
- a budget curve that gets worse as n grows (not monotone in n) is named, with the n after which it does,
  since "the budget a curve needs" then means its first n that reaches the target;
- beside it, always, the paired mean difference of the headline metric (on − off) and its interval.
"""

from __future__ import annotations

import math

import numpy as np

from moetune.contract import higher_is_better
from moetune.report import budget, reduction
from moetune.report.labels import ARM_LABELS, GATE_LABELS, setting_text
from moetune.report.paired import PairedDiff, find
from moetune.report.sweep import ReductionKey

HEADLINE_CANDIDATES = (1, 2, 5)  # targets the headline may read the local-search curve at (all in REDUCTION_AT)
TAIL_SHARE = 4  # ... never beyond N_arm / 4 trials
NOT_MONOTONE = 0.01  # a curve is "not monotone" when it gets worse by more than 1% of its span


HEADLINE_RULE = (
    "How the headline target is chosen: the quality the local-search curve reaches at n = 5 trials, or at "
    "the largest of n = 1, 2, 5 that is at most a quarter of the arm's trials. The expected best of n trials "
    "tends to the single best trial's score as n grows, so a curve's last part is flat and set by its top "
    "one or two trials; a target there makes the budget the other curve needs jump (or become censored) "
    "when one trial changes. At n <= N/4 the best trial is the pick less than a quarter of the time. Wording: "
    "a factor is the answer only when its bootstrap interval excludes 1 (a censored factor included); an "
    'interval containing 1 reads "no detectable difference". The paired difference beside it compares '
    "trial n with local search to trial n without (same hyperparameters and seed)."
)


def headline_at(n_arm: int) -> int:
    """The budget whose quality on the arm's curve is the headline's target: 5, or the largest of 1, 2, 5
    that is at most n_arm / 4 (see HEADLINE_RULE: a target in a curve's flat tail is at the mercy of one
    trial; a small tuning budget is also what the paper's claim is about)."""
    return max(n for n in HEADLINE_CANDIDATES if n == 1 or n * TAIL_SHARE <= n_arm)


def worse_after(curve: budget.Curve, higher: bool) -> int | None:
    """The budget after which the curve first gets worse than its best so far by more than NOT_MONOTONE of
    its span (None when it never does): the expected test score of the trial picked by validation may fall
    as n grows when validation and test disagree."""
    ok = np.isfinite(curve.value)
    g = (curve.value if higher else -curve.value)[ok]
    if g.size < 2 or np.ptp(g) == 0:
        return None
    drop = np.maximum.accumulate(g) - g
    bad = np.flatnonzero(drop > NOT_MONOTONE * np.ptp(g))
    if not bad.size:
        return None
    return int(curve.budgets[ok][int(np.argmax(g[: bad[0] + 1]))])


def verdict(r: reduction.Reduction) -> str:
    """ "n/a" (no target), "no interval", "none" (the interval contains 1) or "claim" (it excludes 1)."""
    if r.n_on is None:
        return "n/a"
    if math.isnan(r.low) or math.isnan(r.high):
        return "no interval"
    return "none" if r.low <= 1 <= r.high else "claim"


def _monotone_note(curves: dict[ReductionKey, budget.Curve], key: ReductionKey, higher: bool) -> str:
    notes = []
    for arm in (key.arm, "off"):
        c = curves.get(key._replace(arm=arm))
        n = worse_after(c, higher) if c is not None else None
        if n is not None:
            notes.append(f"the {ARM_LABELS.get(arm, arm)} curve is not monotone in n: it gets worse after n = {n}")
    return ("; " + " and ".join(notes)) if notes else ""


def _paired_text(p: PairedDiff | None, metric: str) -> tuple[str, str]:
    """(the sentence's words, the terminal's) for the paired mean difference on − off."""
    if p is None:
        return f"no paired trials for {metric}", f"no paired trials for {metric}"
    better = f"local search better in {p.n_better}/{p.n} pairs"
    if p.mean_low <= 0 <= p.mean_high:  # the interval contains "no difference": the words say so
        better = f"no detectable difference; {better}"
    return (
        f"a paired {p.name} {metric} difference of {p.interval_text()} ({better})",
        f"paired {p.name} {metric}: mean {p.interval_text()}, {better}",
    )


def gate_answer(
    key: ReductionKey, r: reduction.Reduction, curves: dict[ReductionKey, budget.Curve], paired: list[PairedDiff]
) -> tuple[str, str]:
    """(clause of the summary's sentence, line for the terminal) for one gate and setting."""
    metric, dataset, weights, gate, sampler, arm = key
    name = GATE_LABELS.get(gate, gate)
    where = setting_text(dataset, weights) + ("" if sampler == "random" else f", {sampler}")
    target = f"{metric} {r.q:.4g}, what {r.at} trial{'s' if r.at != 1 else ''} reach with local search"
    note = _monotone_note(curves, key, higher_is_better(metric))
    pair, pair_line = _paired_text(find(paired, (gate, dataset, weights, sampler), arm, "off", metric), metric)
    learned = find(paired, (gate, dataset, weights, sampler), "on", "frozen", metric)
    if arm == "on" and learned is not None:  # the matched control says whether learning the permutation is why
        text = learned.interval_text() + (
            " (no detectable difference)" if learned.mean_low <= 0 <= learned.mean_high else ""
        )
        pair += f"; learning the permutation (on − frozen): {text}"
        pair_line += f"; on − frozen: {text}"
    kind = verdict(r)
    if kind == "n/a":
        clause = f"has no budget reduction ({r})"
        line = f"budget reduction {r}"
    elif kind == "no interval":
        clause = f"needs {r} fewer trials to reach {target}, without an interval (running best): not a claim"
        line = f"budget reduction {r}, no interval (running best): not a claim, to reach {target}"
    elif kind == "none":
        clause = f"shows no detectable difference in the tuning budget to reach {target} (reduction {r})"
        line = f"no detectable difference in budget (reduction {r}) to reach {target}"
    elif r.factor is not None and r.factor < 1:
        clause = f"needs {1 / r.factor:.3g}x more trials, not fewer, to reach {target} (reduction {r})"
        line = f"{1 / r.factor:.3g}x more trials, not fewer (reduction {r}), to reach {target}"
    else:
        clause = f"needs {r} fewer trials to reach {target}"
        line = f"budget reduction {r} to reach {target}"
    return f"{name} on {where} {clause}{note}, with {pair}", f"{name} ({where}): {line}{note}; {pair_line}"


def headline_answer(
    reductions: dict[ReductionKey, list[reduction.Reduction]],
    curves: dict[ReductionKey, budget.Curve],
    paired: list[PairedDiff],
    metric: str,
) -> tuple[str, list[str]]:
    """(one sentence for summary.md, one line per gate for the terminal): local search ("on") over "off" at
    the quality the local-search curve reaches at headline_at(its trials), worded by the module's rule."""
    lines, clauses = [], []
    for key in sorted(k for k in reductions if k.metric == metric and k.arm == "on"):
        reds = reductions[key]
        if not reds:
            continue
        curve = curves.get(key)
        at = headline_at(curve.n_trials) if curve is not None else HEADLINE_CANDIDATES[-1]
        r = next((x for x in reds if x.at == at), reds[-1])
        clause, line = gate_answer(key, r, curves, paired)
        clauses.append(clause)
        lines.append(line)
    if not clauses:
        return (
            "No gate has studies both with and without local search, so there is no reduction factor; "
            "run local_search=on,off."
        ), []
    return "With permutation local search, " + "; ".join(clauses) + ".", lines
