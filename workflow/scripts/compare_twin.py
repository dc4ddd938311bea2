from pathlib import Path

import _repo

from analysis.table1 import twin_comparison

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
box_metrics = Path(snakemake.input.metrics).parent / "box" / "metrics.json"  # noqa: F821
document = twin_comparison(snakemake.wildcards.experiment, box_metrics, snakemake.output.comparison)  # noqa: F821
log.info("twin comparison: met %s, missed %s", document["met"], document["missed"])
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
