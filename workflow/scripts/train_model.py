from pathlib import Path

import _repo
import torch

from mpd.stage import train_model

log = _repo.setup_logging(snakemake)  # noqa: F821 (injected by Snakemake)
torch.set_num_threads(snakemake.threads)  # noqa: F821
out = train_model(Path(snakemake.input.dataset).parent, Path(snakemake.output.model).parent,  # noqa: F821
                  snakemake.params.model, resume=True)  # noqa: F821
log.info("trained %s", out)
