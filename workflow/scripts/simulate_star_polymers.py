from pathlib import Path

import _repo

from twin.star_polymer import params_from_config, simulate_star_polymers

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
params = params_from_config(snakemake.params.star_polymer)  # noqa: F821
result = simulate_star_polymers(params, Path(snakemake.output.trajectories).parent)  # noqa: F821
log.info("simulated %d star polymers (%d beads), %d frames, max |P|/sum|p| %.1e", result.n_polymers, result.n_beads,
         result.n_frames, result.max_relative_momentum)
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
