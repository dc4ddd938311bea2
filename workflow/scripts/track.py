import json
from pathlib import Path

import _repo

from tracking.params import from_config
from tracking.pipeline import track_video

# the rule's threads are trackpy's worker processes, one thread of computation each
log = _repo.start_rule(snakemake, threads=1)  # noqa: F821 (injected by Snakemake)
video = json.loads(Path(snakemake.input.metadata).read_text())  # noqa: F821
section = dict(snakemake.params.tracking)  # noqa: F821
# A rendered video knows whether its particles are dark; the config still wins when it says.
if "dark_particles" in video and "invert" not in section.get("locate", {}):
    section["locate"] = {**section.get("locate", {}), "invert": bool(video["dark_particles"])}
result = track_video(
    video["frames_path"],
    Path(snakemake.output.trajectories).parent,  # noqa: F821
    from_config(section),
    pixel_size_um=video["pixel_size_um"],
    frame_rate_hz=video["frame_rate_hz"],
    processes=snakemake.threads,  # noqa: F821
    truth_pixels=snakemake.input.get("truth_pixels"),  # noqa: F821
)
log.info("tracked %d trajectories, %.1f features per frame; accuracy: %s", result.qc["trajectories"],
         result.qc["features_per_frame"]["mean"], result.accuracy)
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
