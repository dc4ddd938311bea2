from pathlib import Path

import _repo

from twin.params import SimulationParams, from_dict
from twin.simulate import simulate

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
params = from_dict(SimulationParams, snakemake.params.simulation, "simulation")  # noqa: F821
result = simulate(params, Path(snakemake.output.trajectories).parent)  # noqa: F821
log.info("simulated %s", result)
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
