from pathlib import Path

import _repo

from mpd.stage import rollout_model

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
out = rollout_model(snakemake.input.model, snakemake.input.trajectories,  # noqa: F821
                    Path(snakemake.input.geometry).parent, Path(snakemake.output.rollout).parent,  # noqa: F821
                    snakemake.params.model)  # noqa: F821
log.info("rolled out %s", out)
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
