from pathlib import Path

import _repo

from mpd.lammps_rollout import rollout_lammps

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
status = rollout_lammps(snakemake.input.model, snakemake.input.trajectories, snakemake.input.metadata,  # noqa: F821
                        Path(snakemake.output.status).parent, snakemake.params.lammps,  # noqa: F821
                        snakemake.params.comparison, log_file=snakemake.log[0])  # noqa: F821
log.info("LAMMPS rollout of %d particles on %d rank(s): %s (%.1f s)", status["n_particles"], status["ranks"],
         status["message"], status["seconds"])
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
