from pathlib import Path

import _repo

from mpd.baselines.stage import run_baseline

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
status = run_baseline(snakemake.wildcards.baseline, snakemake.input.trajectories,  # noqa: F821
                      snakemake.input.metadata, Path(snakemake.output.rollout).parent,  # noqa: F821
                      snakemake.params.comparison)  # noqa: F821
log.info("%s: %s (%d frames)", snakemake.wildcards.baseline, status["message"], status["frames_written"])  # noqa: F821
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
