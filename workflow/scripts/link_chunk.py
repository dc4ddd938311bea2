import _repo

from tracking.stream import link_chunk

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
chunk = int(snakemake.wildcards.chunk)  # noqa: F821
path = link_chunk(snakemake.input.plan, chunk, list(snakemake.input.features), snakemake.output.links)  # noqa: F821
log.info("linked chunk %d into %s", chunk, path)
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
