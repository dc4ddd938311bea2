# Real recordings are not copied: the video stage records where they are and in what units.


rule link_video:
    input:
        lambda wildcards: video_files(wildcards.experiment),
    output:
        metadata="results/{experiment}/video/metadata.json",
    params:
        video=lambda wildcards: experiment_section(wildcards.experiment, "video"),
    wildcard_constraints:
        experiment=experiment_pattern(VIDEOS),
    log:
        "logs/{experiment}/link_video.log",
    benchmark:
        "results/{experiment}/benchmarks/link_video.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/tracking.yaml"
    script:
        "../scripts/link_video.py"
