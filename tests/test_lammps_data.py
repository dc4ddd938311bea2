"""A user's LAMMPS data file as a rollout's starting sample (mpd.lammps_data), read by LAMMPS itself."""
from pathlib import Path

import numpy as np
import pytest

from mpd.lammps_data import LammpsDataError, read_lammps_data
from mpd.lammps_env import LammpsUnavailableError, open_lammps


@pytest.fixture(scope="module", autouse=True)
def lammps_or_skip():
    try:
        open_lammps().close()
    except (LammpsUnavailableError, ImportError, OSError) as error:
        pytest.skip(f"LAMMPS unavailable: {error}")


HEADER = """LAMMPS data file written by hand

4 atoms
2 atom types

1.0 6.0 xlo xhi
-2.0 3.0 ylo yhi
{zlo} {zhi} zlo zhi
{tilt}
Masses

1 1.0
2 1.0

Atoms # atomic

3 2 1.5 0.5 {z3}
1 1 2.0 -1.0 {z1}
2 1 7.5 2.5 {z2}
4 2 3.0 1.0 {z4}
"""
VELOCITIES = """
Velocities

1 0.1 0.2 {w1}
2 -0.1 0.0 0.0
3 0.0 0.5 0.0
4 0.0 0.0 {w4}
"""


def data_file(tmp_path: Path, *, dim=3, velocities=True, tilt="") -> Path:
    z = {"z1": 2.0, "z2": 3.5, "z3": 1.0, "z4": 0.5} if dim == 3 else dict.fromkeys(("z1", "z2", "z3", "z4"), 0.0)
    text = HEADER.format(zlo=0.0 if dim == 3 else -0.5, zhi=4.0 if dim == 3 else 0.5, tilt=tilt, **z)
    if velocities:
        text += VELOCITIES.format(w1=0.3 if dim == 3 else 0.0, w4=-0.2 if dim == 3 else 0.0)
    path = tmp_path / "sample.data"
    path.write_text(text)
    return path


def test_a_3d_data_file_gives_the_sample_by_atom_id_relative_to_the_box_corner(tmp_path):
    sample = read_lammps_data(data_file(tmp_path), 3)
    np.testing.assert_array_equal(sample.particle, [0, 1, 2, 3])
    np.testing.assert_array_equal(sample.species, [0, 0, 1, 1])
    np.testing.assert_allclose(sample.box_lengths, [5.0, 5.0, 4.0])
    # atom 2 sits outside the box (x = 7.5 > xhi): wrapped; every position is relative to (xlo, ylo, zlo)
    np.testing.assert_allclose(sample.x, [[1.0, 1.0, 2.0], [1.5, 4.5, 3.5], [0.5, 2.5, 1.0], [2.0, 3.0, 0.5]])
    np.testing.assert_allclose(sample.v[0], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(sample.v[3], [0.0, 0.0, -0.2])


def test_a_2d_data_file_and_one_without_velocities(tmp_path):
    sample = read_lammps_data(data_file(tmp_path, dim=2, velocities=False), 2)
    assert sample.x.shape == (4, 2) and sample.v.shape == (4, 2)
    assert not sample.v.any()
    np.testing.assert_allclose(sample.box_lengths, [5.0, 5.0])


def test_bad_data_files_stop_with_the_file_named(tmp_path):
    with pytest.raises(LammpsDataError, match="does not exist"):
        read_lammps_data(tmp_path / "missing.data", 3)
    broken = tmp_path / "broken.data"
    broken.write_text("LAMMPS data file\n\n3 atoms\n1 atom types\n\n0 1 xlo xhi\n")
    with pytest.raises(LammpsDataError, match=f"cannot read {broken}"):
        read_lammps_data(broken, 3)
    with pytest.raises(LammpsDataError, match="triclinic"):
        read_lammps_data(data_file(tmp_path, tilt="0.5 0.0 0.0 xy xz yz\n"), 3)
