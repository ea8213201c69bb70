"""The dose-response of local search: its effect against the optimizer steps its permutation phase had.

Local search can only move the permutation as far as its phase's steps carry L (notes: about the learning
rate per Adam step, from a draw spanning 0.1), so an effect that a short phase cannot show may appear with a
longer one. Each sweep here is one phase length (scripts/dose_response.py runs them); per sweep and gate this
reads the on, frozen and off arms and gives, at the median steps of the phase:
- the paired test-metric differences on − off, on − frozen and frozen − off (report.paired: bootstrap
  interval, share of pairs better, Wilcoxon p);
- the budget reduction factor of on over off at the headline n, with its interval (report.budget);
- what the phase did: median perm_shift and perm_reassigned of the on arm;
- the median routing NMI per arm, where the data knows its routing (synthetic teacher): the mechanism check.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moetune import contract
from moetune.report import reduction
from moetune.report.analysis import trials_of
from moetune.report.answer import headline_at
from moetune.report.labels import GATE_LABELS
from moetune.report.paired import compare
from moetune.report.sweep import Sweep, group_of
from moetune.tracking.base import RecordedStudy

COMPARED = (("on", "off"), ("on", "frozen"), ("frozen", "off"))


@dataclass
class DosePoint:
    """One sweep (phase length), gate and comparison."""

    sweep: str
    gate: str
    dataset: str
    e_perm: float
    perm_steps: float  # median over the on arm's trials
    comparison: str  # "on - off", ...
    metric: str
    n_pairs: int
    mean: float
    mean_low: float
    mean_high: float
    share_better: float
    wilcoxon_p: float
    reduction_at: int  # the headline n of the on curve (on − off rows only)
    reduction: float
    reduction_low: float
    reduction_high: float
    reduction_censored: bool
    perm_shift: float  # medians over the on arm's trials
    perm_reassigned: float
    nmi_on: float  # median routing NMI per arm (NaN where the data has no known routing)
    nmi_frozen: float
    nmi_off: float


def _median(studies: list[RecordedStudy], metric: str) -> float:
    values = [t.metrics[metric] for s in studies for t in s.trials if t.finished and metric in t.metrics]
    return float(statistics.median(values)) if values else math.nan


def points(sweep: Sweep, metric: str, *, resamples: int = 1000) -> list[DosePoint]:
    """The sweep's points: one per gate (and dataset) and comparison whose two arms both ran."""
    by_gate: dict[tuple[str, str], dict[str, list[RecordedStudy]]] = {}
    for s in sweep.studies:
        gate, arm, dataset, *_ = group_of(s)
        by_gate.setdefault((gate, dataset), {}).setdefault(arm, []).append(s)
    higher = contract.higher_is_better(metric)
    out = []
    for (gate, dataset), arms in sorted(by_gate.items()):
        if "on" not in arms:
            continue
        on = arms["on"]
        shared: dict[str, Any] = dict(
            sweep=sweep.name,
            gate=gate,
            dataset=dataset,
            e_perm=_median(on, contract.E_PERM),
            perm_steps=_median(on, contract.PERM_STEPS),
            metric=metric,
            perm_shift=_median(on, contract.PERM_SHIFT),
            perm_reassigned=_median(on, contract.PERM_REASSIGNED),
            **{f"nmi_{arm}": _median(arms.get(arm, []), contract.ROUTING_NMI) for arm in ("on", "frozen", "off")},
        )
        for arm, base in COMPARED:
            if arm not in arms or base not in arms:
                continue
            group = (gate, dataset, "", "")
            p = compare(group, arm, arms[arm], base, arms[base], metric, resamples=resamples, seed=0, level=0.9)
            at, r = 0, None
            if (arm, base) == ("on", "off"):
                trials_on = trials_of(on[0], sweep.selection, metric)
                at = headline_at(trials_on.n)
                r = reduction.reduction_factor(
                    trials_on,
                    trials_of(arms["off"][0], sweep.selection, metric),
                    at=at,
                    test_higher_is_better=higher,
                    val_higher_is_better=contract.higher_is_better(sweep.selection),
                    resamples=resamples,
                )
            out.append(
                DosePoint(
                    comparison=f"{arm} - {base}",
                    n_pairs=p.n,
                    mean=p.mean,
                    mean_low=p.mean_low,
                    mean_high=p.mean_high,
                    share_better=p.share_better,
                    wilcoxon_p=p.wilcoxon_p,
                    reduction_at=at,
                    reduction=_factor(r),
                    reduction_low=r.low if r else math.nan,
                    reduction_high=r.high if r else math.nan,
                    reduction_censored=bool(r and r.censored),
                    **shared,
                )
            )
    return out


def _factor(r: reduction.Reduction | None) -> float:
    """The factor, or a censored factor's lower bound (reduction_censored says which); NaN without one."""
    value = None if r is None else (r.factor if r.factor is not None else r.lower_bound)
    return math.nan if value is None else float(value)


def write_csv(path: Path, rows: list[DosePoint]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(DosePoint.__dataclass_fields__))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(row).items()})


def write_figure(path: Path, rows: list[DosePoint]) -> None:
    """Per gate (columns): the paired differences with their intervals, how far the permutation moved, and
    routing NMI per arm, each against the phase's steps (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def log_steps(ax) -> None:  # the phases' own step counts as the ticks, no crowded minor labels
        steps = sorted({r.perm_steps for r in rows if math.isfinite(r.perm_steps)})
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(steps, [f"{s:.0f}" for s in steps])

    gates = sorted({r.gate for r in rows})
    has_nmi = any(math.isfinite(r.nmi_on) for r in rows)
    n_rows = 3 if has_nmi else 2
    fig, axes = plt.subplots(n_rows, len(gates), figsize=(4.6 * len(gates), 3.2 * n_rows), squeeze=False)
    colours = {"on - off": "tab:blue", "on - frozen": "tab:red", "frozen - off": "tab:gray"}
    for col, gate in enumerate(gates):
        mine = sorted((r for r in rows if r.gate == gate), key=lambda r: r.perm_steps)
        ax = axes[0][col]
        for comparison, colour in colours.items():
            pts = [r for r in mine if r.comparison == comparison]
            if not pts:
                continue
            x = [r.perm_steps for r in pts]
            y = [r.mean for r in pts]
            err = [[r.mean - r.mean_low for r in pts], [r.mean_high - r.mean for r in pts]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=colour, label=comparison)
        ax.axhline(0.0, color="black", linewidth=0.8)
        log_steps(ax)
        ax.set_title(f"{GATE_LABELS.get(gate, gate)}: paired difference")
        ax.set_ylabel(f"{mine[0].metric} (arm − base), mean, 90% CI" if mine else "")
        ax.legend(fontsize=8)
        on_off = [r for r in mine if r.comparison == "on - off"]
        ax = axes[1][col]
        ax.plot([r.perm_steps for r in on_off], [r.perm_shift for r in on_off], marker="o", label="perm_shift")
        log_steps(ax)
        ax.set_ylabel("max |L - L0| / spread of L0")
        ax2 = ax.twinx()
        ax2.plot(
            [r.perm_steps for r in on_off],
            [r.perm_reassigned for r in on_off],
            marker="s",
            color="tab:orange",
            label="experts reassigned",
        )
        ax2.set_ylabel("experts reassigned (median)", color="tab:orange")
        ax.set_title("what the phase did (on arm, medians)")
        if has_nmi:
            ax = axes[2][col]
            for arm, colour in (("on", "tab:blue"), ("frozen", "tab:gray"), ("off", "black")):
                ax.plot(
                    [r.perm_steps for r in on_off],
                    [getattr(r, f"nmi_{arm}") for r in on_off],
                    marker="o",
                    color=colour,
                    label=arm,
                )
            log_steps(ax)
            ax.set_ylabel("routing NMI (median)")
            ax.set_title("recovery of the teacher's routing")
            ax.legend(fontsize=8)
        axes[-1][col].set_xlabel("optimizer steps in the permutation phase (median, log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
