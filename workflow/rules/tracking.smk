# Tracking: any video (rendered or linked) to features, trajectories and velocities.


rule track_video:
    input:
        # the recording's files: a changed file reruns its tracking
        video=lambda wildcards: video_files(wildcards.experiment),
        metadata="results/{experiment}/video/metadata.json",
    output:
        features="results/{experiment}/tracking/features.parquet",
        trajectories="results/{experiment}/tracking/trajectories.parquet",
        qc="results/{experiment}/tracking/qc.json",
        qc_figures=qc_report_figures(),
    params:
        tracking=lambda wildcards: experiment_section(wildcards.experiment, "tracking"),
    wildcard_constraints:
        experiment=experiment_pattern(VIDEOS),
    log:
        "logs/{experiment}/track_video.log",
    benchmark:
        "results/{experiment}/benchmarks/track_video.tsv"
    threads: 8  # an upper bound: Snakemake lowers it to the cores it is given
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/tracking.yaml"
    script:
        "../scripts/track.py"


use rule track_video as track_twin with:
    input:
        video="results/{experiment}/video/frames.tif",
        metadata="results/{experiment}/video/metadata.json",
        truth_pixels="results/{experiment}/video/truth_pixels.parquet",
    output:
        features="results/{experiment}/tracking/features.parquet",
        trajectories="results/{experiment}/tracking/trajectories.parquet",
        qc="results/{experiment}/tracking/qc.json",
        qc_figures=qc_report_figures(),
        accuracy="results/{experiment}/tracking/accuracy.json",
    wildcard_constraints:
        experiment=experiment_pattern(SYNTHETIC),
    log:
        "logs/{experiment}/track_twin.log",
    benchmark:
        "results/{experiment}/benchmarks/track_twin.tsv"
