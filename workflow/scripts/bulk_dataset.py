from pathlib import Path

import _repo

from mpd.geometry.particles import training_block_dataset

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
metadata = training_block_dataset(snakemake.input.trajectories, snakemake.input.metadata,  # noqa: F821
                                  Path(snakemake.output.dataset).parent, snakemake.params.geometry,  # noqa: F821
                                  snakemake.params.comparison)  # noqa: F821
log.info("training block dataset: %s", {k: metadata[k] for k in ("horizon", "length_scale_um") if k in metadata})
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
