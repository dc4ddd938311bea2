import json
from pathlib import Path

import _repo
import pandas as pd

from analysis.measure import length_scale
from mpd.geometry.masks import window_from_video_metadata
from mpd.geometry.params import GeometryParams
from mpd.geometry.stage import compute_geometry

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
params = GeometryParams.from_config(snakemake.params.geometry)  # noqa: F821
video = json.loads(Path(snakemake.input.video).read_text())  # noqa: F821
trajectories = pd.read_parquet(snakemake.input.trajectories)  # noqa: F821
window = window_from_video_metadata(video)
period_s = snakemake.params.shear_period_s  # noqa: F821
cycle_frames = period_s * video["frame_rate_hz"] if period_s else None
# One definition of the particle spacing a for the model's cut-off and the analysis.
kwargs = params.compute_kwargs(spacing_um=length_scale(trajectories, window=tuple(window)), cycle_frames=cycle_frames)
log.info("geometry with %s", kwargs)
compute_geometry(trajectories, Path(snakemake.output.observables).parent,  # noqa: F821
                 frame_rate_hz=video["frame_rate_hz"], video_metadata=video, **kwargs)
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
