# The learned model of a bulk experiment rolled out in LAMMPS on a large sample: the truth's box tiled
# `lammps.tiles` times, shared among `lammps.ranks` MPI ranks (mpd.lammps_rollout; docs/lammps.md); a digital
# twin's model on a tiled copy of its sheared box (rollout_box_lammps).
# Only experiments with a `lammps:` section get its outputs in `all` (common.smk).


def lammps_settings_of(experiment):
    """The experiment's `lammps:` section over its defaults (mpd.lammps_rollout.LAMMPS_DEFAULTS)."""
    from mpd.lammps_rollout import lammps_settings

    return lammps_settings(experiment_section(experiment, "lammps"))


def lammps_ranks(wildcards):
    return lammps_settings_of(wildcards.experiment)["ranks"]


rule rollout_lammps:
    input:
        model="results/{experiment}/model/model.pt",
        trajectories="results/{experiment}/truth/trajectories.parquet",
        metadata="results/{experiment}/truth/metadata.json",
        # a user's LAMMPS data file as the sample (lammps.data_file): an input, so that editing it reruns the rule
        data=lambda wildcards: lammps_settings_of(wildcards.experiment)["data_file"] or [],
    output:
        trajectories="results/{experiment}/lammps/trajectories.parquet",
        dump="results/{experiment}/lammps/trajectory.dump",
        conservation="results/{experiment}/lammps/conservation.csv",
        status="results/{experiment}/lammps/status.json",
    params:
        lammps=lambda wildcards: lammps_settings_of(wildcards.experiment),
        comparison=lambda wildcards: comparison_section(wildcards.experiment, SPLIT_KEYS),
    wildcard_constraints:
        experiment=experiment_pattern(LAMMPS),
    log:
        "logs/{experiment}/rollout_lammps.log",
    benchmark:
        "results/{experiment}/benchmarks/rollout_lammps.tsv"
    # One CPU per MPI rank: locally the script starts `mpiexec -np ranks` (the mpich wheel's); on SLURM the rule
    # is one job of `ranks` tasks (the `mpi` resource: the executor submits --ntasks=ranks and runs the job once,
    # not under `srun -n1`), and the script starts the ranks with `srun` itself. One rank runs in the script.
    threads: lammps_ranks
    resources:
        mem_mb=8000,
        runtime=240,
        tasks=lammps_ranks,
        mpi=lambda wildcards: "srun" if lammps_ranks(wildcards) > 1 else None,
        cpus_per_task=1,
    conda:
        "../envs/model.yaml"
    script:
        "../scripts/rollout_lammps.py"



rule rollout_box_lammps:
    input:
        model="results/{experiment}/model/model.pt",
        truth="results/{experiment}/truth/trajectories.parquet",
        truth_metadata="results/{experiment}/truth/metadata.json",
        strain="results/{experiment}/truth/strain.csv",
        geometry="results/{experiment}/geometry/metadata.json",
    output:
        trajectories="results/{experiment}/lammps/trajectories.parquet",
        dump="results/{experiment}/lammps/trajectory.dump",
        conservation="results/{experiment}/lammps/conservation.csv",
        status="results/{experiment}/lammps/status.json",
    params:
        # the section as written: a twin's tiles default to 2 x 2 (mpd.lammps_rollout.lammps_settings)
        lammps=lambda wildcards: experiment_section(wildcards.experiment, "lammps"),
        model=lambda wildcards: experiment_section(wildcards.experiment, "model"),
    wildcard_constraints:
        experiment=experiment_pattern(LAMMPS_TWINS),
    log:
        "logs/{experiment}/rollout_box_lammps.log",
    benchmark:
        "results/{experiment}/benchmarks/rollout_box_lammps.tsv"
    # as rollout_lammps: one CPU per rank, one SLURM job of `ranks` tasks
    threads: lammps_ranks
    resources:
        mem_mb=8000,
        runtime=240,
        tasks=lammps_ranks,
        mpi=lambda wildcards: "srun" if lammps_ranks(wildcards) > 1 else None,
        cpus_per_task=1,
    conda:
        "../envs/model.yaml"
    script:
        "../scripts/rollout_box_lammps.py"
