from pathlib import Path

import _repo

from mpd.stage import rollout_bulk

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
status = rollout_bulk(snakemake.input.model, snakemake.input.trajectories, snakemake.input.metadata,  # noqa: F821
                      Path(snakemake.output.rollout).parent, snakemake.params.comparison,  # noqa: F821
                      snakemake.params.model)  # noqa: F821
log.info("rolled out the learned model: %s", status["message"])
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
