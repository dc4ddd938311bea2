import _repo

from tracking.stream import locate_chunk

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
chunk = int(snakemake.wildcards.chunk)  # noqa: F821
path = locate_chunk(snakemake.input.plan, chunk, snakemake.output.features, processes=snakemake.threads)  # noqa: F821
log.info("located chunk %d into %s", chunk, path)
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
