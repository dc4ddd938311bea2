import json
from pathlib import Path

import _repo
import pandas as pd

from analysis.inputs import truth_box_table
from mpd.params import ModelConfig
from mpd.stage import box_rollout_span, rollout_box

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
inputs = snakemake.input  # noqa: F821
params = ModelConfig.from_config(snakemake.params.model).rollout  # noqa: F821
truth = pd.read_parquet(inputs.truth)
boxes = truth_box_table(inputs.truth_metadata, pd.read_csv(inputs.strain))
geometry = Path(inputs.geometry).parent
start, n_frames = box_rollout_span(params, geometry, int(truth["frame"].max()))
out = rollout_box(inputs.model, truth[truth["frame"] <= start], boxes, geometry,
                  Path(snakemake.output.rollout).parent, params, start_frame=start, n_frames=n_frames)  # noqa: F821
log.info("rolled out in the periodic box: %s", json.loads(Path(snakemake.output.status).read_text())["status"])  # noqa: F821
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
