# Simulated bulk samples (star-polymer melts, no camera): truth by LAMMPS, the learned model and the baselines
# fitted on the training block and rolled out from the held-back truth, and the paper's Table 1
# (docs/comparison.md).


rule simulate_star_polymers:
    output:
        trajectories="results/{experiment}/truth/trajectories.parquet",
        metadata="results/{experiment}/truth/metadata.json",
    params:
        star_polymer=lambda wildcards: experiment_section(wildcards.experiment, "synthetic", "star_polymer"),
    wildcard_constraints:
        experiment=experiment_pattern(BULK),
    log:
        "logs/{experiment}/simulate_star_polymers.log",
    benchmark:
        "results/{experiment}/benchmarks/simulate_star_polymers.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=120,
    conda:
        "../envs/twin.yaml"
    script:
        "../scripts/simulate_star_polymers.py"


rule bulk_dataset:
    input:
        trajectories=rules.simulate_star_polymers.output.trajectories,
        metadata=rules.simulate_star_polymers.output.metadata,
    output:
        dataset="results/{experiment}/geometry/dataset/metadata.json",
    params:
        geometry=lambda wildcards: experiment_section(wildcards.experiment, "geometry"),
        comparison=lambda wildcards: comparison_section(wildcards.experiment, SPLIT_KEYS),
    wildcard_constraints:
        experiment=experiment_pattern(BULK),
    log:
        "logs/{experiment}/bulk_dataset.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/model.yaml"
    script:
        "../scripts/bulk_dataset.py"


rule rollout_bulk:
    input:
        model="results/{experiment}/model/model.pt",
        trajectories=rules.simulate_star_polymers.output.trajectories,
        metadata=rules.simulate_star_polymers.output.metadata,
    output:
        rollout="results/{experiment}/model/rollout.parquet",
        conservation="results/{experiment}/model/conservation.csv",
        status="results/{experiment}/model/rollout_status.json",
    params:
        model=lambda wildcards: experiment_section(wildcards.experiment, "model"),
        comparison=lambda wildcards: comparison_section(wildcards.experiment, SPLIT_KEYS),
    wildcard_constraints:
        experiment=experiment_pattern(BULK),
    log:
        "logs/{experiment}/rollout_bulk.log",
    benchmark:
        "results/{experiment}/benchmarks/rollout_bulk.tsv"
    threads: 8  # an upper bound: Snakemake lowers it to the cores it is given
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/model.yaml"
    script:
        "../scripts/rollout_bulk.py"


rule baseline:
    input:
        trajectories=rules.simulate_star_polymers.output.trajectories,
        metadata=rules.simulate_star_polymers.output.metadata,
    output:
        rollout="results/{experiment}/baselines/{baseline}/rollout.parquet",
        status="results/{experiment}/baselines/{baseline}/rollout_status.json",
        fit="results/{experiment}/baselines/{baseline}/fit.json",
    params:
        comparison=lambda wildcards: comparison_section(wildcards.experiment, SPLIT_KEYS + (wildcards.baseline,)),
    wildcard_constraints:
        experiment=experiment_pattern(BULK),
        baseline="dpd|gns|gns_sde",
    log:
        "logs/{experiment}/baseline_{baseline}.log",
    benchmark:
        "results/{experiment}/benchmarks/baseline_{baseline}.tsv"
    threads: 8  # GNS trains with torch; an upper bound, lowered to the cores Snakemake is given
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/model.yaml"
    script:
        "../scripts/baseline.py"


rule compare_models:
    input:
        unpack(comparison_inputs),
    output:
        comparison="results/{experiment}/analysis/comparison.json",
        figure=report(
            "results/{experiment}/analysis/comparison/comparison.png",
            caption="../report/comparison.rst",
            category="{experiment}",
            subcategory="comparison",
        ),
    params:
        comparison=lambda wildcards: comparison_section(wildcards.experiment),
    wildcard_constraints:
        experiment=experiment_pattern(BULK),
    log:
        "logs/{experiment}/compare_models.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/compare_models.py"


rule table1:
    input:
        comparisons=expand("results/{experiment}/analysis/comparison.json", experiment=BULK + SYNTHETIC),
    output:
        markdown=report("results/table1.md", caption="../report/table1.rst", category="comparison"),
        csv="results/table1.csv",
    log:
        "logs/table1.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/table1.py"


rule compare_twin:
    # The colloid twin's row of Table 1, from its analysis (the learned model in the periodic box).
    input:
        metrics="results/{experiment}/analysis/metrics.json",
    output:
        comparison="results/{experiment}/analysis/comparison.json",
    wildcard_constraints:
        experiment=experiment_pattern(SYNTHETIC),
    log:
        "logs/{experiment}/compare_twin.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/compare_twin.py"
