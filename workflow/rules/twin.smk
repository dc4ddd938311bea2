# The digital twin: ground truth by LAMMPS, then a simulated microscope films it.


rule simulate_twin:
    output:
        trajectories="results/{experiment}/truth/trajectories.parquet",
        strain="results/{experiment}/truth/strain.csv",
        metadata="results/{experiment}/truth/metadata.json",
    params:
        simulation=lambda wildcards: experiment_section(wildcards.experiment, "synthetic", "simulation"),
    wildcard_constraints:
        experiment=experiment_pattern(SYNTHETIC),
    log:
        "logs/{experiment}/simulate_twin.log",
    benchmark:
        "results/{experiment}/benchmarks/simulate_twin.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/twin.yaml"
    script:
        "../scripts/simulate_twin.py"


rule render_twin:
    input:
        trajectories=rules.simulate_twin.output.trajectories,
        metadata=rules.simulate_twin.output.metadata,
    output:
        frames="results/{experiment}/video/frames.tif",
        metadata="results/{experiment}/video/metadata.json",
        truth_pixels="results/{experiment}/video/truth_pixels.parquet",
    params:
        microscope=lambda wildcards: experiment_section(wildcards.experiment, "synthetic", "microscope"),
    wildcard_constraints:
        experiment=experiment_pattern(SYNTHETIC),
    log:
        "logs/{experiment}/render_twin.log",
    benchmark:
        "results/{experiment}/benchmarks/render_twin.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../envs/twin.yaml"
    script:
        "../scripts/render_twin.py"
