from pathlib import Path

import _repo
import pandas as pd

from analysis.inputs import truth_box_table
from mpd.lammps_rollout import rollout_box_lammps

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
inputs = snakemake.input  # noqa: F821
boxes = truth_box_table(inputs.truth_metadata, pd.read_csv(inputs.strain))
status = rollout_box_lammps(inputs.model, inputs.truth, boxes, Path(inputs.geometry).parent,
                            Path(snakemake.output.status).parent, snakemake.params.lammps,  # noqa: F821
                            snakemake.params.model, log_file=snakemake.log[0])  # noqa: F821
log.info("LAMMPS rollout of the sheared box, %d particles on %d rank(s): %s (%.1f s)", status["n_particles"],
         status["ranks"], status["message"], status["seconds"])
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
