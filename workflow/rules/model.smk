# The metriplectic model: training (GPU when there is one) and rollouts.


def set_resource(rule, name, default):
    """A rule's resource as set by --set-resources or a profile's set-resources (default: not set there).

    Read when the rules are parsed, so that it can shape other resources. Snakemake 9 holds the settings
    as parsed Resources (from the command line or a profile) or as plain values (its API).
    """
    settings = workflow.resource_settings.overwrite_resources.get(rule) or {}
    if name not in settings:
        return default
    value = settings[name]
    if hasattr(value, "is_evaluable"):  # snakemake.resources.Resource
        if value.is_evaluable():
            raise WorkflowError(f"set-resources {rule}:{name} must be a number, got the expression {value.raw!r}")
        value = value.value
    return value


def train_model_tasks():
    """Data-parallel processes of train_model: its `tasks` resource (set-resources), default 1."""
    tasks = set_resource("train_model", "tasks", 1)
    try:
        tasks = int(tasks)
    except (TypeError, ValueError):
        tasks = 0
    if tasks < 1:
        raise WorkflowError(f"set-resources train_model:tasks must be a positive integer, got {tasks!r}")
    return tasks


TRAIN_TASKS = train_model_tasks()
# tasks > 1: one SLURM job of TRAIN_TASKS tasks (mpi: the SLURM executor submits --ntasks=TRAIN_TASKS and its
# jobstep runs the Snakemake job once, not under `srun -n1`; the script starts the ranks with srun itself), each
# task with an equal share of the rule's threads, so the job asks for `threads` CPUs in all.
TRAIN_PARALLEL = (
    {"mpi": "srun", "cpus_per_task": lambda wildcards, threads: max(1, threads // TRAIN_TASKS)}
    if TRAIN_TASKS > 1
    else {}
)


rule train_model:
    input:
        dataset="results/{experiment}/geometry/dataset/metadata.json",
    output:
        model="results/{experiment}/model/model.pt",
        rollout_step="results/{experiment}/model/rollout_step.pt",
        log="results/{experiment}/model/training_log.csv",
    params:
        model=lambda wildcards: experiment_section(wildcards.experiment, "model"),
    log:
        "logs/{experiment}/train_model.log",
    benchmark:
        "results/{experiment}/benchmarks/train_model.tsv"
    threads: 8  # an upper bound: Snakemake lowers it to the cores it is given
    # Data-parallel training (mpd.distributed, docs/training.md): `tasks` processes, set in the SLURM profile
    # (set-resources: train_model: tasks: 4, optionally nodes: 2) or on the command line
    # (--set-resources train_model:tasks=2). They share the rule's threads (threads // tasks each) and give
    # the model of one process up to summation order (float64: within 1e-9). Inside a SLURM job the script
    # runs `srun` with one torchrun agent per task (c10d rendezvous on the job's first node; gloo on CPU,
    # NCCL on GPU with one GPU per task: gpu: K and tasks_per_gpu: 1); elsewhere `torchrun --standalone`.
    resources:
        mem_mb=8000,
        runtime=240,
        tasks=TRAIN_TASKS,
        **TRAIN_PARALLEL,
    conda:
        "../envs/model.yaml"
    script:
        "../scripts/train_model.py"


rule rollout_model:
    input:
        model=rules.train_model.output.model,
        trajectories="results/{experiment}/tracking/trajectories.parquet",
        geometry=rules.geometry.output.metadata,
    output:
        rollout="results/{experiment}/model/rollout.parquet",
        conservation="results/{experiment}/model/conservation.csv",
        status="results/{experiment}/model/rollout_status.json",
    params:
        model=lambda wildcards: experiment_section(wildcards.experiment, "model"),
    wildcard_constraints:
        experiment=experiment_pattern(FILMED),
    log:
        "logs/{experiment}/rollout_model.log",
    benchmark:
        "results/{experiment}/benchmarks/rollout_model.tsv"
    threads: 8  # an upper bound: Snakemake lowers it to the cores it is given
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/model.yaml"
    script:
        "../scripts/rollout_model.py"


rule rollout_box_twin:
    input:
        model=rules.train_model.output.model,
        truth="results/{experiment}/truth/trajectories.parquet",
        truth_metadata="results/{experiment}/truth/metadata.json",
        strain="results/{experiment}/truth/strain.csv",
        geometry=rules.geometry.output.metadata,
    output:
        rollout="results/{experiment}/model/rollout_box.parquet",
        conservation="results/{experiment}/model/conservation_box.csv",
        status="results/{experiment}/model/rollout_box_status.json",
    params:
        model=lambda wildcards: experiment_section(wildcards.experiment, "model"),
    wildcard_constraints:
        experiment=experiment_pattern(SYNTHETIC),
    log:
        "logs/{experiment}/rollout_box_twin.log",
    benchmark:
        "results/{experiment}/benchmarks/rollout_box_twin.tsv"
    threads: 8  # an upper bound: Snakemake lowers it to the cores it is given
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/model.yaml"
    script:
        "../scripts/rollout_box.py"
