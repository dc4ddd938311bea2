from pathlib import Path

import _repo

from analysis.stage import analyse_experiment

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
inputs = snakemake.input  # noqa: F821
metrics = analyse_experiment(
    inputs.trajectories, inputs.video, Path(snakemake.output.metrics).parent,  # noqa: F821
    truth=inputs.get("truth"), truth_metadata=inputs.get("truth_metadata"), strain=inputs.get("strain"),
    rollout=inputs.rollout, settings=snakemake.params.analysis,  # noqa: F821
    rollout_status=inputs.rollout_status, dataset_metadata=inputs.dataset,
    rollout_box=inputs.get("rollout_box"), rollout_box_status=inputs.get("rollout_box_status"),
    training_log=inputs.get("training_log"),
)
log.info("analysed: %s", sorted(metrics))
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
