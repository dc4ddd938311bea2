# Analysis: the same statistics on experiment, model rollout and (for twins) truth, and the figures of the report.


rule analyse_video:
    input:
        trajectories="results/{experiment}/tracking/trajectories.parquet",
        video="results/{experiment}/video/metadata.json",
        rollout=rules.rollout_model.output.rollout,
        rollout_status=rules.rollout_model.output.status,
        dataset=rules.geometry.output.dataset,
        training_log=rules.train_model.output.log,
    output:
        metrics="results/{experiment}/analysis/metrics.json",
        figures=[
            report(
                f"results/{{experiment}}/analysis/figures/{name}.png",
                caption=f"../report/{name}.rst",
                category="{experiment}",
                subcategory="analysis",
            )
            for name in ANALYSIS_FIGURES + ["fidelity_window", "training"]
        ],
        movie=report(
            "results/{experiment}/analysis/figures/movie.html",
            caption="../report/movie.rst",
            category="{experiment}",
            subcategory="analysis",
        ),
        movie_mp4="results/{experiment}/analysis/figures/movie.mp4",
    params:
        analysis=lambda wildcards: experiment_section(wildcards.experiment, "analysis"),
    wildcard_constraints:
        experiment=experiment_pattern(VIDEOS),
    log:
        "logs/{experiment}/analyse.log",
    benchmark:
        "results/{experiment}/benchmarks/analyse_video.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/analyse.py"


use rule analyse_video as analyse_twin with:
    input:
        trajectories="results/{experiment}/tracking/trajectories.parquet",
        video="results/{experiment}/video/metadata.json",
        rollout=rules.rollout_model.output.rollout,
        rollout_status=rules.rollout_model.output.status,
        dataset=rules.geometry.output.dataset,
        training_log=rules.train_model.output.log,
        rollout_box=rules.rollout_box_twin.output.rollout,
        rollout_box_status=rules.rollout_box_twin.output.status,
        truth="results/{experiment}/truth/trajectories.parquet",
        truth_metadata="results/{experiment}/truth/metadata.json",
        strain="results/{experiment}/truth/strain.csv",
    output:
        metrics="results/{experiment}/analysis/metrics.json",
        figures=[
            report(
                f"results/{{experiment}}/analysis/figures/{name}.png",
                caption=f"../report/{name}.rst",
                category="{experiment}",
                subcategory="analysis",
            )
            for name in ANALYSIS_FIGURES + ["fidelity_window", "fidelity_periodic_box", "training"]
        ],
        box_figures=[
            report(
                f"results/{{experiment}}/analysis/box/figures/{name}.png",
                caption="../report/box_figure.rst",
                category="{experiment}",
                subcategory="periodic box",
            )
            for name in ANALYSIS_FIGURES
        ],
        movie=report(
            "results/{experiment}/analysis/figures/movie.html",
            caption="../report/movie.rst",
            category="{experiment}",
            subcategory="analysis",
        ),
        movie_mp4="results/{experiment}/analysis/figures/movie.mp4",
    wildcard_constraints:
        experiment=experiment_pattern(SYNTHETIC),
    log:
        "logs/{experiment}/analyse_twin.log",
    benchmark:
        "results/{experiment}/benchmarks/analyse_twin.tsv"
