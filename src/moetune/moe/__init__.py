"""The sparse Mixture-of-Experts model: gates (one module each), experts, permutation local search, MMoE."""

from moetune.moe.gates import Gate, available_gates, build_gate, gate_class
from moetune.moe.model import MMoE, ModelOutput

__all__ = ["Gate", "MMoE", "ModelOutput", "available_gates", "build_gate", "gate_class"]
