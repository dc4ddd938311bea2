# The metriplectic model: training (GPU when there is one) and rollouts.


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
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
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
