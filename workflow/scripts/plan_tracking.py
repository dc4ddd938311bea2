import json
from pathlib import Path

import _repo

from tracking.params import from_config
from tracking.stream import plan_tracking

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
video = json.loads(Path(snakemake.input.metadata).read_text())  # noqa: F821
section = dict(snakemake.params.tracking)  # noqa: F821
# A rendered video knows whether its particles are dark; the config still wins when it says (as track.py).
if "dark_particles" in video and "invert" not in section.get("locate", {}):
    section["locate"] = {**section.get("locate", {}), "invert": bool(video["dark_particles"])}
params = from_config(section)
plan = plan_tracking(
    video["frames_path"],
    params,
    pixel_size_um=video["pixel_size_um"],
    frame_rate_hz=video["frame_rate_hz"],
    chunk_frames=params.chunk_frames,
    out_path=snakemake.output.plan,  # noqa: F821
)
log.info("planned %d frames in %d chunks of %d", len(plan["frame_numbers"]), len(plan["chunks"]), params.chunk_frames)
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
