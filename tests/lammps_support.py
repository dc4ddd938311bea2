"""MPI helpers for the LAMMPS tests: launch commands and whether two LAMMPS ranks start here."""
import subprocess
import sys
from pathlib import Path

import pytest

from mpd.lammps_env import LammpsUnavailableError, mpi_env, mpiexec_path

REPO = Path(__file__).resolve().parents[1]


def mpi_command(ranks: int, *args: str) -> list[str]:
    return [str(mpiexec_path()), "-np", str(ranks), sys.executable, *args]


def mpi_run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = mpi_env()
    env["PYTHONPATH"] = str(REPO) + ((":" + env["PYTHONPATH"]) if env.get("PYTHONPATH") else "")
    return subprocess.run(argv, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two_ranks_start(tmp_path_factory):
    """Skip unless mpiexec starts two ranks that see one LAMMPS world of size 2."""
    try:
        mpiexec_path()
    except LammpsUnavailableError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("probe")
    probe = ("import sys; from mpd.lammps_env import finalize_mpi, open_lammps; lmp = open_lammps(); "
             "rank, size = lmp.extract_setting('world_rank'), lmp.extract_setting('world_size'); "
             "open(sys.argv[1] + f'/rank{rank}', 'w').write(str(size)); lmp.close(); finalize_mpi()")
    proc = mpi_run(mpi_command(2, "-c", probe, str(root)), root)
    sizes = [(root / f"rank{r}").read_text() if (root / f"rank{r}").exists() else None for r in (0, 1)]
    if proc.returncode != 0 or sizes != ["2", "2"]:
        pytest.skip(f"MPI cannot start two LAMMPS ranks here (rc {proc.returncode}, world sizes seen {sizes}): "
                    f"{proc.stderr[-500:]}")
