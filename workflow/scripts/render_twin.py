import json
from pathlib import Path

import _repo
import pandas as pd

from twin.params import MicroscopeParams, from_dict
from twin.render import render_video

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
params = from_dict(MicroscopeParams, snakemake.params.microscope, "microscope")  # noqa: F821
truth = pd.read_parquet(snakemake.input.trajectories)  # noqa: F821
truth_meta = json.loads(Path(snakemake.input.metadata).read_text())  # noqa: F821
result = render_video(truth, truth_meta, params, Path(snakemake.output.frames).parent)  # noqa: F821
log.info("rendered %s", result)
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
