import json
from pathlib import Path

import _repo

from mpd.geometry.chunks import open_trajectories, spacing_in_window
from mpd.geometry.masks import window_from_video_metadata
from mpd.geometry.params import GeometryParams
from mpd.geometry.stage import compute_geometry

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
params = GeometryParams.from_config(snakemake.params.geometry)  # noqa: F821
video = json.loads(Path(snakemake.input.video).read_text())  # noqa: F821
# Read by chunks of frames (bounded memory): opening validates the file in one pass.
trajectories = open_trajectories(snakemake.input.trajectories)  # noqa: F821
window = window_from_video_metadata(video)
period_s = snakemake.params.shear_period_s  # noqa: F821
cycle_frames = period_s * video["frame_rate_hz"] if period_s else None
# One definition of the particle spacing a for the model's cut-off and the analysis:
# analysis.measure.length_scale's, here summed chunk by chunk (mpd.geometry.chunks.spacing_in_window).
spacing = spacing_in_window(trajectories, window, chunk_frames=params.chunk_frames)
kwargs = params.compute_kwargs(spacing_um=spacing, cycle_frames=cycle_frames)
log.info("geometry with %s", kwargs)
compute_geometry(trajectories, Path(snakemake.output.observables).parent,  # noqa: F821
                 frame_rate_hz=video["frame_rate_hz"], video_metadata=video, **kwargs)
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
