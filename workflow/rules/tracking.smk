# Tracking: any video (rendered or linked) to features, trajectories and velocities.
#
# An experiment with `tracking.chunk_frames` set is tracked split (tracking.stream, docs/tracking.md "Long
# videos"): the checkpoint plan_tracking resolves the automatic parameters once and cuts the video into
# chunks (how many depends on the video), one locate_chunk job per chunk locates it, one link_chunk job per
# chunk links it (after a warm-up on the previous chunk's last frames), and link_tracking
# (link_tracking_twin) gathers the chunks and writes what track_video (track_twin) writes, so every rule
# downstream is the same. Without chunk_frames the one-job rules below run, in memory.

CHUNKED = [name for name in FILMED if experiment_section(name, "tracking").get("chunk_frames") is not None]


def tracking_video_input(experiment):
    """The video files a tracking job reads: the rendered TIFF of a twin, the recording of a real video."""
    if experiment in SYNTHETIC:
        return [f"results/{experiment}/video/frames.tif"]
    return video_files(experiment)


def tracking_plan(wildcards) -> dict:
    """The experiment's plan (known once the checkpoint has run)."""
    with open(checkpoints.plan_tracking.get(experiment=wildcards.experiment).output.plan) as handle:
        return json.load(handle)


def chunk_feature_files(wildcards):
    """The features of every chunk of the experiment's plan, in order."""
    n_chunks = len(tracking_plan(wildcards)["chunks"])
    return [f"results/{wildcards.experiment}/tracking/features/chunk-{i:05d}.parquet" for i in range(n_chunks)]


def chunk_link_inputs(wildcards):
    """The features one link_chunk job reads: its chunk's, its warm-up's (and the first frames' for an automatic
    search range), in the plan's order (tracking.stream.link_chunk_inputs)."""
    needed = tracking_plan(wildcards)["link_inputs"][int(wildcards.chunk)]
    return [f"results/{wildcards.experiment}/tracking/features/chunk-{j:05d}.parquet" for j in needed]


def chunk_link_files(suffix):
    """The link files (suffix ".parquet") or link states (".state.npz") of every chunk, in order."""

    def files(wildcards):
        n_chunks = len(tracking_plan(wildcards)["chunks"])
        return [f"results/{wildcards.experiment}/tracking/links/chunk-{i:05d}{suffix}" for i in range(n_chunks)]

    return files


checkpoint plan_tracking:
    input:
        video=lambda wildcards: tracking_video_input(wildcards.experiment),
        metadata="results/{experiment}/video/metadata.json",
    output:
        plan="results/{experiment}/tracking/plan.json",
    params:
        tracking=lambda wildcards: experiment_section(wildcards.experiment, "tracking"),
    wildcard_constraints:
        experiment=experiment_pattern(CHUNKED),
    log:
        "logs/{experiment}/plan_tracking.log",
    benchmark:
        "results/{experiment}/benchmarks/plan_tracking.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/tracking.yaml"
    script:
        "../scripts/plan_tracking.py"


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
        experiment=experiment_pattern([name for name in VIDEOS if name not in CHUNKED]),
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
        experiment=experiment_pattern([name for name in SYNTHETIC if name not in CHUNKED]),
    log:
        "logs/{experiment}/track_twin.log",
    benchmark:
        "results/{experiment}/benchmarks/track_twin.tsv"


rule locate_chunk:
    input:
        plan="results/{experiment}/tracking/plan.json",
        video=lambda wildcards: tracking_video_input(wildcards.experiment),
    output:
        features="results/{experiment}/tracking/features/chunk-{chunk}.parquet",
    wildcard_constraints:
        experiment=experiment_pattern(CHUNKED),
        chunk=r"\d{5}",
    log:
        "logs/{experiment}/locate_chunk/{chunk}.log",
    benchmark:
        "results/{experiment}/benchmarks/locate_chunk/{chunk}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../envs/tracking.yaml"
    script:
        "../scripts/locate_chunk.py"


rule link_chunk:
    input:
        plan="results/{experiment}/tracking/plan.json",
        features=chunk_link_inputs,
    output:
        links="results/{experiment}/tracking/links/chunk-{chunk}.parquet",
        state="results/{experiment}/tracking/links/chunk-{chunk}.state.npz",
    wildcard_constraints:
        experiment=experiment_pattern(CHUNKED),
        chunk=r"\d{5}",
    log:
        "logs/{experiment}/link_chunk/{chunk}.log",
    benchmark:
        "results/{experiment}/benchmarks/link_chunk/{chunk}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../envs/tracking.yaml"
    script:
        "../scripts/link_chunk.py"


rule link_tracking:
    input:
        plan="results/{experiment}/tracking/plan.json",
        features=chunk_feature_files,
        links=chunk_link_files(".parquet"),
        link_states=chunk_link_files(".state.npz"),
        video=lambda wildcards: tracking_video_input(wildcards.experiment),  # its first frame: the QC figures
    output:
        trajectories="results/{experiment}/tracking/trajectories.parquet",
        qc="results/{experiment}/tracking/qc.json",
        qc_figures=qc_report_figures(),
    wildcard_constraints:
        experiment=experiment_pattern([name for name in VIDEOS if name in CHUNKED]),
    log:
        "logs/{experiment}/link_tracking.log",
    benchmark:
        "results/{experiment}/benchmarks/link_tracking.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/tracking.yaml"
    script:
        "../scripts/link_tracking.py"


use rule link_tracking as link_tracking_twin with:
    input:
        plan="results/{experiment}/tracking/plan.json",
        features=chunk_feature_files,
        links=chunk_link_files(".parquet"),
        link_states=chunk_link_files(".state.npz"),
        video=lambda wildcards: tracking_video_input(wildcards.experiment),
        truth_pixels="results/{experiment}/video/truth_pixels.parquet",
    output:
        trajectories="results/{experiment}/tracking/trajectories.parquet",
        qc="results/{experiment}/tracking/qc.json",
        qc_figures=qc_report_figures(),
        accuracy="results/{experiment}/tracking/accuracy.json",
    wildcard_constraints:
        experiment=experiment_pattern([name for name in SYNTHETIC if name in CHUNKED]),
    log:
        "logs/{experiment}/link_tracking_twin.log",
    benchmark:
        "results/{experiment}/benchmarks/link_tracking_twin.tsv"
