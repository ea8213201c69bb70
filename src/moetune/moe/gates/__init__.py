"""Gates by name: the module moetune.moe.gates.<name> defines GATE, a Gate subclass."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from moetune.errors import ConfigError
from moetune.moe.gates.base import Gate, GateOutput, SlotRouting, smooth_step

__all__ = ["Gate", "GateOutput", "SlotRouting", "available_gates", "build_gate", "gate_class", "smooth_step"]


def available_gates() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base" and not m.name.startswith("_"))


def gate_class(name: str) -> type[Gate]:
    if name not in available_gates():
        raise ConfigError(f"unknown gate {name!r}; choose one of {available_gates()}")
    return importlib.import_module(f"moetune.moe.gates.{name}").GATE


def build_gate(name: str, in_dim: int, n_experts: int, **params) -> Gate:
    """Build gate `name`; params are its config keys (k, gamma, ...); unknown keys are a ConfigError."""
    cls = gate_class(name)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "in_dim", "n_experts"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(f"gate {name!r} does not take {unknown}; it takes {sorted(accepted)}")
    return cls(in_dim, n_experts, **params)
