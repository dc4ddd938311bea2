# Geometry: neighbours, Voronoi areas, strain and D2min per particle, masks, and the training dataset.


rule geometry:
    input:
        trajectories="results/{experiment}/tracking/trajectories.parquet",
        video="results/{experiment}/video/metadata.json",
    output:
        observables="results/{experiment}/geometry/observables.parquet",
        metadata="results/{experiment}/geometry/metadata.json",
        dataset="results/{experiment}/geometry/dataset/metadata.json",
    params:
        geometry=lambda wildcards: experiment_section(wildcards.experiment, "geometry"),
        shear_period_s=lambda wildcards: shear_period_s(wildcards.experiment),
    wildcard_constraints:
        experiment=experiment_pattern(FILMED),
    log:
        "logs/{experiment}/geometry.log",
    benchmark:
        "results/{experiment}/benchmarks/geometry.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/model.yaml"
    script:
        "../scripts/geometry.py"
