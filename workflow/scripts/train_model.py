from pathlib import Path

import _repo

from mpd.stage import train_model

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
out = train_model(Path(snakemake.input.dataset).parent, Path(snakemake.output.model).parent,  # noqa: F821
                  snakemake.params.model, resume=True)  # noqa: F821
log.info("trained %s", out)
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
