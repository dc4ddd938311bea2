"""Fixtures shared by several test files."""
from lammps_support import two_ranks_start  # noqa: F401 (skips unless two MPI ranks of LAMMPS start)
from slurm_support import slurm_cluster  # noqa: F401 (a one-node SLURM cluster: tests/slurm_support.py)
