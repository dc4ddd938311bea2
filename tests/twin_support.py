"""A short digital twin filmed through a microscope, for the tracking tests (skips without LAMMPS)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

twin_params = pytest.importorskip("twin.params")
twin_render = pytest.importorskip("twin.render")
twin_simulate = pytest.importorskip("twin.simulate")
twin_lammps = pytest.importorskip("twin.lammps_env")


def half_cycle_twin_video(root: Path, microscope=None) -> Path:
    """The default twin shortened to half a shear cycle (21 frames), rendered into root/video; returns root.

    microscope: twin.params.MicroscopeParams (default: the default microscope).
    """
    defaults = twin_params.SimulationParams()
    params = dataclasses.replace(defaults, shear=dataclasses.replace(defaults.shear, cycles=0.5))
    try:
        twin_simulate.simulate(params, root / "truth")
    except twin_lammps.LammpsUnavailableError as error:
        pytest.skip(f"LAMMPS unavailable: {error}")
    truth = pd.read_parquet(root / "truth" / "trajectories.parquet")
    meta = json.loads((root / "truth" / "metadata.json").read_text())
    twin_render.render_video(truth, meta, microscope or twin_params.MicroscopeParams(), root / "video")
    return root
