import json
from pathlib import Path

import _repo
import pandas as pd
import torch

from analysis.inputs import truth_box_table
from mpd.geometry.dataset import read_metadata
from mpd.params import ModelConfig
from mpd.stage import rollout_box

log = _repo.setup_logging(snakemake)  # noqa: F821 (injected by Snakemake)
torch.set_num_threads(snakemake.threads)  # noqa: F821
inputs = snakemake.input  # noqa: F821
params = ModelConfig.from_config(snakemake.params.model).rollout  # noqa: F821
truth = pd.read_parquet(inputs.truth)
boxes = truth_box_table(inputs.truth_metadata, pd.read_csv(inputs.strain))
geometry = Path(inputs.geometry).parent
start = params.box_start_frame
if start is None:  # as the window rollout: its start frame, else the start of the test block
    test = read_metadata(geometry).get("splits", {}).get("test", {}).get("first_frame")
    start = params.start_frame if params.start_frame is not None else int(test if test is not None else 1)
start = max(int(start), 1)  # the start velocities need the frame before
last = int(truth["frame"].max())
n_frames = params.box_n_frames if params.box_n_frames is not None else last - start
if start + n_frames > last:
    raise ValueError(f"model.rollout.box_n_frames: the truth ends at frame {last}, the box rollout would reach "
                     f"frame {start + n_frames}")
out = rollout_box(inputs.model, truth[truth["frame"] <= start], boxes, geometry,
                  Path(snakemake.output.rollout).parent, params, start_frame=start, n_frames=n_frames)  # noqa: F821
log.info("rolled out in the periodic box: %s", json.loads(Path(snakemake.output.status).read_text())["status"])  # noqa: F821
