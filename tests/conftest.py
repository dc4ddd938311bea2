"""Fixtures shared by several test files."""
from slurm_support import slurm_cluster  # noqa: F401 (a one-node SLURM cluster: tests/slurm_support.py)
