import _repo

from tracking.source import write_video_metadata

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
metadata = write_video_metadata(snakemake.params.video, snakemake.output.metadata)  # noqa: F821
log.info("linked %s: %d frames of %dx%d px", metadata["frames_path"], metadata["n_frames"],
         metadata["width_px"], metadata["height_px"])
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
