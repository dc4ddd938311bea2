"""The split tracking as Snakemake jobs: a checkpoint plans, one job per chunk locates, one per chunk links,
one gathers."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile
import yaml
from test_tracking_stream import FPS, MPP, N_FRAMES, render, simulate

REPO = Path(__file__).resolve().parents[1]
CHUNK_FRAMES = 10
TRACKING = {"locate": {"refine": "none", "invert": False}, "link": {"search_range_px": 4.0},
            "checks": {"max_short_fraction": None}}
# Proven to run in their emulated conda envs when mpd.envs reads checkpoints as rules (see `emulation`).
EMULATED_RULES = {"stream": ("plan_tracking", "locate_chunk", "link_chunk", "link_tracking")}


def emulation() -> dict:
    """Scripts import only their env's packages (as tests/test_workflow.py) once mpd.envs knows the checkpoint."""
    from mpd import envs

    if "plan_tracking" in envs.rule_envs():
        return {**os.environ, "MPD_EMULATE_CONDA_ENVS": "emulated-conda-envs.txt"}
    return dict(os.environ)


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
         "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args],
        capture_output=True, text=True, timeout=600, check=False, env=emulation())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One video tracked split (chunk_frames) and, as the reference, in one job."""
    workdir = tmp_path_factory.mktemp("workflow_stream")
    x, y = simulate()
    rng = np.random.default_rng(1)
    tifffile.imwrite(workdir / "frames.tif", np.stack([render(x[f], y[f], rng) for f in range(N_FRAMES)]),
                     photometric="minisblack")
    video = {"path": str(workdir / "frames.tif"), "pixel_size_um": MPP, "frame_rate_hz": FPS}
    config = {"experiments": {"split": {"video": video, "tracking": {**TRACKING, "chunk_frames": CHUNK_FRAMES}},
                              "whole": {"video": video, "tracking": TRACKING}}}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir


def jobs_run(output: str) -> list[str]:
    return re.findall(r"^(?:localrule|rule|localcheckpoint|checkpoint) (\w+):", output, re.MULTILINE)


def test_dry_run_plans_the_split_and_keeps_the_one_job_rule(workdir):
    result = snakemake(workdir, "-n", "results/split/tracking/qc.json", "results/whole/tracking/qc.json")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = jobs_run(result.stdout + result.stderr)
    assert "plan_tracking" in jobs and "link_tracking" in jobs and "track_video" in jobs, jobs
    assert "locate_chunk" not in jobs and "link_chunk" not in jobs  # unknown until the checkpoint has counted chunks


def test_split_jobs_give_the_one_job_trajectories(workdir):
    result = snakemake(workdir, "results/split/tracking/qc.json", "results/whole/tracking/qc.json")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = jobs_run(result.stdout + result.stderr)
    n_chunks = -(-N_FRAMES // CHUNK_FRAMES)
    assert jobs.count("locate_chunk") == n_chunks and jobs.count("plan_tracking") == 1, jobs
    assert jobs.count("link_chunk") == n_chunks and jobs.count("link_tracking") == 1, jobs
    split_dir, whole_dir = workdir / "results" / "split" / "tracking", workdir / "results" / "whole" / "tracking"
    plan = json.loads((split_dir / "plan.json").read_text())
    assert len(plan["chunks"]) == n_chunks
    assert sorted(p.name for p in (split_dir / "features").iterdir()) == [f"chunk-{i:05d}.parquet"
                                                                        for i in range(n_chunks)]
    assert sorted(p.name for p in (split_dir / "links").iterdir()) == sorted(
        f"chunk-{i:05d}{suffix}" for i in range(n_chunks) for suffix in (".parquet", ".state.npz"))
    # the gather used the link jobs' links: each chunk started in its predecessor's final state
    link = json.loads((split_dir / "qc.json").read_text())["split"]["link"]
    assert link["per_chunk"] is True and link["boundaries"] == n_chunks - 1 and link["relinked"] == [], link
    assert pq.ParquetFile(split_dir / "trajectories.parquet").num_row_groups == n_chunks
    split, whole = pd.read_parquet(split_dir / "trajectories.parquet"), pd.read_parquet(whole_dir /
                                                                                           "trajectories.parquet")
    pd.testing.assert_frame_equal(split, whole)
    assert sorted(p.name for p in (split_dir / "qc").iterdir()) == sorted(p.name for p in (whole_dir / "qc").iterdir())
    if "MPD_EMULATE_CONDA_ENVS" in emulation():
        record = (workdir / "emulated-conda-envs.txt").read_text()
        assert all(rule in record for rule in EMULATED_RULES["stream"]), record
    # nothing left to do, and a second dry run now lists the chunks' jobs as done
    again = snakemake(workdir, "-n", "results/split/tracking/qc.json")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]


def test_a_bad_chunk_frames_is_a_config_error_naming_the_key(workdir, tmp_path):
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["experiments"]["split"]["tracking"]["chunk_frames"] = 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", "results/split/tracking/qc.json")
    assert result.returncode != 0
    assert "chunk_frames" in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]
