from pathlib import Path

import _repo

from analysis.table1 import compare_rollouts

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
inputs, settings = snakemake.input, snakemake.params.comparison  # noqa: F821
rollouts = {model: (inputs[f"{model}_rollout"], inputs[f"{model}_status"]) for model in settings["models"]}
document = compare_rollouts(snakemake.wildcards.experiment, settings["case"], inputs.trajectories,  # noqa: F821
                            inputs.metadata, rollouts, Path(snakemake.output.figure).parent,  # noqa: F821
                            settings, comparison_path=snakemake.output.comparison)  # noqa: F821
log.info("compared %s: met %d, missed %s", sorted(rollouts), len(document["met"]), document["missed"])
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
