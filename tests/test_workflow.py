"""The Snakemake workflow end to end on a tiny twin and on the real sample."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BULK_WATER = REPO.parent / "shared" / "data" / "bulk_water"

TINY_TWIN = {
    "synthetic": {
        "simulation": {"n_particles": 150, "equilibration_s": 0.5, "frame_rate_hz": 10,
                       "shear": {"amplitude": 0.04, "period_s": 1.0, "cycles": 1}},
        "microscope": {"width_px": 96, "height_px": 96},
    }
}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
         "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args],
        capture_output=True, text=True, timeout=600, check=False,
    )
    return result


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    experiments = {"tiny": TINY_TWIN}
    if BULK_WATER.exists():
        experiments["bulk_water"] = {"video": {"path": str(BULK_WATER / "*.png"), "pixel_size_um": 1 / 2.85,
                                               "frame_rate_hz": 24}}
    (workdir / "config.yaml").write_text(yaml.safe_dump({"experiments": experiments}))
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_twin_outputs_follow_the_schema(finished_run):
    truth_dir = finished_run / "results" / "tiny" / "truth"
    truth = pd.read_parquet(truth_dir / "trajectories.parquet")
    assert {"frame", "t", "particle", "species", "diameter", "x", "y", "xu", "yu", "vx", "vy"} <= set(truth.columns)
    assert truth["particle"].nunique() == 150 and truth["frame"].nunique() == 11
    strain = pd.read_csv(truth_dir / "strain.csv")
    assert strain["strain"].abs().max() == pytest.approx(0.04, rel=0.05)

    video_dir = finished_run / "results" / "tiny" / "video"
    meta = json.loads((video_dir / "metadata.json").read_text())
    assert meta["n_frames"] == 11 and meta["width_px"] == 96 and meta["source"] == "rendered"
    pixels = pd.read_parquet(video_dir / "truth_pixels.parquet")
    # particles enter and leave the field of view
    in_view = pixels[pixels["in_fov"]].groupby("frame")["particle"].apply(frozenset)
    assert len(frozenset.union(*in_view) - frozenset.intersection(*in_view)) > 0
    assert (video_dir / "frames.tif").stat().st_size > 0


@pytest.mark.skipif(not BULK_WATER.exists(), reason="the shared real sample is not beside the checkout")
def test_real_video_is_linked_not_copied(finished_run):
    video_dir = finished_run / "results" / "bulk_water" / "video"
    meta = json.loads((video_dir / "metadata.json").read_text())
    assert meta["source"] == "linked" and meta["n_frames"] == 30
    assert (meta["width_px"], meta["height_px"]) == (640, 424)
    assert meta["pixel_size_um"] == pytest.approx(1 / 2.85)
    assert sorted(p.name for p in video_dir.iterdir()) == ["metadata.json"]


def test_rerun_has_nothing_to_do(finished_run):
    result = snakemake(finished_run, "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Nothing to be done" in result.stdout + result.stderr


def test_changing_one_twin_parameter_reruns_only_that_experiment(finished_run):
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    config["experiments"]["tiny"]["synthetic"]["microscope"]["bit_depth"] = 8
    changed = finished_run / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(finished_run),
         "--configfile", str(changed), "--cores", "1", "--dry-run", "--quiet", "rules"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = result.stdout + result.stderr
    assert "render_twin" in jobs
    assert "simulate_twin" not in jobs and "link_video" not in jobs
