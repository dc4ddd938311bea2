from pathlib import Path

import _repo

from tracking.stream import link_chunks

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
result = link_chunks(
    snakemake.input.plan,  # noqa: F821
    list(snakemake.input.features),  # noqa: F821 (the plan's chunks, in order)
    Path(snakemake.output.trajectories).parent,  # noqa: F821
    truth_pixels=snakemake.input.get("truth_pixels"),  # noqa: F821
    link_files=list(snakemake.input.links),  # noqa: F821 (link_chunk's, one per chunk, in order)
)
split = result.qc["split"]
log.info("gathered %d chunks (%d boundaries relinked): %d trajectories, %.1f features per frame; accuracy: %s",
         split["chunks"], split["link"]["boundaries_relinked"], result.qc["trajectories"],
         result.qc["features_per_frame"]["mean"], result.accuracy)
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
