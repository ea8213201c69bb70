"""The words every part of the report shares: gate and arm names, what each arm comparison isolates.

Kept apart from the computations so the answer, the tables, the paired view and the figures name things
the same way without importing one another.
"""

from __future__ import annotations

GATE_LABELS = {
    "topk": "Top-k",
    "dselect_k": "DSelect-k",
    "comet": "COMET",
    "hash": "Hash",
    "softmax": "Softmax",
    "xmoe": "X-MoE",
    "expert_choice": "Expert Choice",
    "usmoe": "USMoE",
    "soft_moe": "Soft MoE",
}
ARMS = ("on", "frozen", "warmup")  # arms whose budget curves are compared with local_search=off
ARM_LABELS = {
    "on": "local search",
    "frozen": "frozen permutation (control)",
    "warmup": "uniform warm-up (dense start)",
    "off": "no local search",
}
ARM_ORDER = {"on": 0, "frozen": 1, "warmup": 2, "off": 3}  # rows of a table, series of a panel

# (arm, base): each arm's test metric minus the base arm's, trial by trial; the order of the report
COMPARISONS = (("on", "off"), ("frozen", "off"), ("warmup", "off"), ("on", "frozen"))
ISOLATES = {
    ("on", "off"): "local search as a whole",
    ("on", "frozen"): "learning the permutation: frozen is on with the permutation's log-weights L kept at "
    "their initial draw",
    ("frozen", "off"): "the phase's soft mixing and its hardening to a permutation, nothing learned",
    ("warmup", "off"): "a dense start: every expert mixed by 1/n for E_perm epochs, during which a Top-k gate "
    "gets no gradient; not a control for the permutation",
}


def comparison_text(arm: str, base: str) -> str:
    """e.g. "on − off"."""
    return f"{arm} − {base}"


def setting_text(dataset: str, weights: str) -> str:
    return dataset + ("" if weights == "equal" else f", task weights {weights.replace('_', ', ')}")
