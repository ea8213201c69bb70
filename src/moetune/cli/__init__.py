"""The command line: ``moetune`` (subcommands) and the Hydra entry point behind ``python train.py``."""
