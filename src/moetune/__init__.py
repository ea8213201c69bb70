"""moetune: tuning and tracking for sparse Mixture-of-Experts gates with permutation local search."""

__version__ = "0.1.0"
