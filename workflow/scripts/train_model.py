from pathlib import Path

import _repo

from mpd.stage import train_model

log = _repo.start_rule(snakemake)  # noqa: F821 (injected by Snakemake)
# resource `tasks` > 1: that many data-parallel processes (mpd.distributed.launch), sharing the rule's threads
tasks = int(snakemake.resources.get("tasks", 1) or 1)  # noqa: F821
threads_per_task = int(snakemake.resources.get("cpus_per_task", 0) or max(1, snakemake.threads // tasks))  # noqa: F821
out = train_model(Path(snakemake.input.dataset).parent, Path(snakemake.output.model).parent,  # noqa: F821
                  snakemake.params.model, resume=True, tasks=tasks, threads_per_task=threads_per_task,  # noqa: F821
                  log_file=snakemake.log[0] if snakemake.log else None)  # noqa: F821
log.info("trained %s (%d process%s)", out, tasks, "es" if tasks > 1 else "")
_repo.finish_rule(snakemake)  # noqa: F821 (keeps the outputs until a later run replaces them)
