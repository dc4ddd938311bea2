import _repo

from tracking.source import write_video_metadata

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
# Units: the config's where given, else the file's own metadata; a disagreement is logged and recorded.
metadata = write_video_metadata(snakemake.params.video, snakemake.output.metadata,  # noqa: F821
                                key=f"experiments.{snakemake.wildcards.experiment}.video")  # noqa: F821
log.info("linked %s (%s): %d frames of %dx%d px, %.6g um/px, %.6g frames/s", metadata["frames_path"],
         metadata["format"], metadata["n_frames"], metadata["width_px"], metadata["height_px"],
         metadata["pixel_size_um"], metadata["frame_rate_hz"])
if metadata["disagreements"]:
    log.warning("the config overrides the file's own %s (see 'sources' in %s)",
                ", ".join(metadata["disagreements"]), snakemake.output.metadata)  # noqa: F821
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
