"""The Snakemake workflow end to end on a tiny twin and on the real sample."""
import json
import os
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
                       "shear": {"amplitude": 0.04, "period_s": 1.0, "cycles": 2}},
        "microscope": {"width_px": 96, "height_px": 96},
    },
    "model": {"training": {"epochs": 1}},
    # the learned model in LAMMPS on a 2 x 1 tiled copy of the sheared box, on 2 MPI ranks (lammps.smk)
    "lammps": {"tiles": [2, 1], "ranks": 2},  # frames: to the truth's end (from the box rollout's start, 18)
}
N_FRAMES = 21
# Every rule's script runs with only its conda env's packages importable (mpd.envs.emulate_rule); each appends
# its rule and env to this file in the working directory.
EMULATION_RECORD = "emulated-conda-envs.txt"
# The rules each test proves ran so; test_envs.py checks that the workflow tests together cover every script rule.
EMULATED_RULES = {
    "twin": ("simulate_twin", "render_twin", "track_twin", "geometry", "train_model", "rollout_model",
             "rollout_box_twin", "analyse_twin", "rollout_box_lammps"),
    "table1": ("compare_twin", "table1"),
    "video": ("link_video", "track_video"),
}


def emulated() -> dict:
    """The environment of a Snakemake run whose scripts import only what their rule's conda env installs."""
    return {**os.environ, "MPD_EMULATE_CONDA_ENVS": EMULATION_RECORD}


def rules_run_emulated(workdir: Path) -> dict[str, set[str]]:
    """Rule -> the env files it ran emulated in, as recorded in `workdir`."""
    record = workdir / EMULATION_RECORD
    seen: dict[str, set[str]] = {}
    for line in record.read_text().splitlines() if record.exists() else []:
        rule, env = line.split("\t")
        seen.setdefault(rule, set()).add(env)
    return seen


def assert_ran_emulated(workdir: Path, rules) -> None:
    from mpd.envs import rule_envs

    seen = rules_run_emulated(workdir)
    for rule in rules:
        assert rule in seen, f"rule {rule} did not run in its emulated conda env: {sorted(seen)}"
        assert seen[rule] == {str(rule_envs()[rule].relative_to(REPO))}, (rule, seen[rule])


def targets(experiments) -> list[str]:
    """Everything for the twin; tracking only for the real sample (its training is not a test's job)."""
    wanted = ["results/tiny/analysis/metrics.json", "results/tiny/tracking/accuracy.json",
              "results/tiny/lammps/status.json"]
    if "bulk_water" in experiments:
        wanted.append("results/bulk_water/tracking/qc.json")
    return wanted


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
         "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args],
        capture_output=True, text=True, timeout=600, check=False, env=emulated(),
    )
    return result


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    experiments = {"tiny": TINY_TWIN}
    if BULK_WATER.exists():
        experiments["bulk_water"] = {"video": {"path": str(BULK_WATER / "*.png"), "pixel_size_um": 1 / 2.85,
                                               "frame_rate_hz": 24},
                                     "tracking": {"locate": {"invert": True}}}
    (workdir / "config.yaml").write_text(yaml.safe_dump({"experiments": experiments}))
    result = snakemake(workdir, *targets(experiments))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_twin_outputs_follow_the_schema(finished_run):
    truth_dir = finished_run / "results" / "tiny" / "truth"
    truth = pd.read_parquet(truth_dir / "trajectories.parquet")
    assert {"frame", "t", "particle", "species", "diameter", "x", "y", "xu", "yu", "vx", "vy"} <= set(truth.columns)
    assert truth["particle"].nunique() == 150 and truth["frame"].nunique() == N_FRAMES
    strain = pd.read_csv(truth_dir / "strain.csv")
    assert strain["strain"].abs().max() == pytest.approx(0.04, rel=0.05)

    video_dir = finished_run / "results" / "tiny" / "video"
    meta = json.loads((video_dir / "metadata.json").read_text())
    assert meta["n_frames"] == N_FRAMES and meta["width_px"] == 96 and meta["source"] == "rendered"
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


def test_every_stage_ran_on_the_twin(finished_run):
    exp = finished_run / "results" / "tiny"
    accuracy = json.loads((exp / "tracking" / "accuracy.json").read_text())
    assert accuracy["localisation_rms_px"] < 0.1 and accuracy["fraction_correct_links"] >= 0.99
    assert (exp / "geometry" / "dataset" / "metadata.json").exists()
    for name in ("model.pt", "rollout_step.pt", "training_log.csv", "rollout.parquet", "conservation.csv",
                 "rollout_box.parquet", "conservation_box.csv", "rollout_box_status.json"):
        assert (exp / "model" / name).stat().st_size > 0, name
    metrics = json.loads((exp / "analysis" / "metrics.json").read_text())
    assert set(metrics["datasets"]) == {"experiment", "truth", "rollout", "null"}
    assert metrics["errors"]["truth"]["rollout"]["rdf"] >= 0
    # the fidelity of the model against the truth, in the field of view and in the twin's periodic box
    assert set(metrics["fidelity"]) == {"window", "periodic_box"}
    for report in metrics["fidelity"].values():
        assert {"targets", "rows", "met", "missed", "beats_null_everywhere"} <= set(report)
    figures = {p.name for p in (exp / "analysis" / "figures").iterdir()}
    assert {"rdf.png", "nn_distance.png", "fidelity_window.png", "fidelity_periodic_box.png", "movie.mp4",
            "movie.html", "training.png"} <= figures and len([f for f in figures if f.endswith(".png")]) == 11
    # what the rollouts did is in metrics.json, and the QC figures are there for the report
    assert set(metrics["rollout_status"]) == {"window", "periodic_box"}
    assert all(s["status"] in ("completed", "diverged") for s in metrics["rollout_status"].values())
    assert {p.name for p in (exp / "tracking" / "qc").iterdir()} >= {"features_per_frame.png", "annotated_frame.png"}
    lammps = json.loads((exp / "lammps" / "status.json").read_text())
    assert lammps["status"] == "completed" and lammps["ranks"] == 2 and lammps["sheared"] and lammps["tiles"] == [2, 1]
    assert lammps["n_particles"] == 2 * 150 and lammps["frames_written"] == N_FRAMES - 18
    box = json.loads((exp / "analysis" / "box" / "metrics.json").read_text())
    assert box["domain"] == "periodic box" and set(box["datasets"]) == {"truth", "rollout", "null"}
    assert_ran_emulated(finished_run, EMULATED_RULES["twin"])


@pytest.mark.skipif(not BULK_WATER.exists(), reason="the shared real sample is not beside the checkout")
def test_real_video_is_tracked(finished_run):
    qc = json.loads((finished_run / "results" / "bulk_water" / "tracking" / "qc.json").read_text())
    assert qc["frames_analysed"] == 30
    assert 100 < qc["features_per_frame"]["median"] < 2000


def test_rerun_has_nothing_to_do(finished_run):
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    result = snakemake(finished_run, "--dry-run", *targets(config["experiments"]))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Nothing to be done" in result.stdout + result.stderr


def test_a_damaged_model_keeps_the_previous_results_until_a_good_model_replaces_them(finished_run, tmp_path):
    """Issue 12: a rerun that fails (here on a damaged model file) loses nothing earlier."""
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir, symlinks=True)
    model_dir = workdir / "results" / "tiny" / "model"
    kept_dir = workdir / "results" / ".previous" / "tiny" / "model"
    good_rollout = pd.read_parquet(model_dir / "rollout.parquet")
    # every finished rule kept its outputs
    for name in ("model.pt", "rollout.parquet", "rollout_status.json", "rollout_box.parquet"):
        assert (kept_dir / name).read_bytes() == (model_dir / name).read_bytes(), name
    assert (workdir / "results" / ".previous" / "tiny" / "analysis" / "metrics.json").exists()

    (model_dir / "model.pt").write_bytes(b"not a model")
    result = snakemake(workdir, "results/tiny/analysis/metrics.json")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("ModelFileError: ") and "model.pt" in lines[-1] and "weights_only" not in lines[-1]
    # whichever rollout ran first failed (Snakemake then stops): its message says where its previous results are
    expected = {"rollout_model": ("rollout.parquet", "conservation.csv", "rollout_status.json"),
                "rollout_box_twin": ("rollout_box.parquet", "conservation_box.csv", "rollout_box_status.json")}
    failed = [(rule, names) for rule, names in expected.items()
              if any(line.startswith(f"Error in rule {rule}; ") and line.endswith(
                  f"its previous results are kept in results/.previous/tiny/model/ ({', '.join(names)}):")
                  for line in lines)]
    assert failed, result.stderr[-3000:]
    for _, names in failed:
        # Snakemake removed the outputs of the failed job; their previous versions are still readable
        assert not (model_dir / names[0]).exists()
        assert (kept_dir / names[0]).exists()
    pd.testing.assert_frame_equal(pd.read_parquet(kept_dir / "rollout.parquet"), good_rollout)
    assert (workdir / "results" / "tiny" / "analysis" / "metrics.json").exists()  # never started: untouched

    # the kept good model brings everything back, and the new results replace the kept ones
    shutil.copyfile(kept_dir / "model.pt", model_dir / "model.pt")
    result = snakemake(workdir, "results/tiny/analysis/metrics.json")
    assert result.returncode == 0, result.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_parquet(model_dir / "rollout.parquet"), good_rollout)
    for _, names in failed:  # rerun, finished, and kept again: the kept file is the new output
        assert (kept_dir / names[0]).stat().st_ino == (model_dir / names[0]).stat().st_ino


def test_table1_has_the_twins_row_from_its_box_analysis(finished_run):
    result = snakemake(finished_run, "results/table1.md")
    assert result.returncode == 0, result.stderr[-3000:]
    comparison = json.loads((finished_run / "results" / "tiny" / "analysis" / "comparison.json").read_text())
    box = json.loads((finished_run / "results" / "tiny" / "analysis" / "box" / "metrics.json").read_text())
    assert comparison["models"]["learned"]["errors"]["rdf"] == pytest.approx(box["errors"]["truth"]["rollout"]["rdf"])
    table = pd.read_csv(finished_run / "results" / "table1.csv")
    row = table[(table["experiment"] == "tiny") & (table["metric"] == "rdf")].iloc[0]
    assert row["Ours"] == pytest.approx(comparison["models"]["learned"]["errors"]["rdf"]) and row["Ours (paper)"] == 0.115
    assert_ran_emulated(finished_run, EMULATED_RULES["table1"])


def test_changing_one_twin_parameter_reruns_only_that_experiment(finished_run):
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    config["experiments"]["tiny"]["synthetic"]["microscope"]["bit_depth"] = 8
    changed = finished_run / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        # targets first: --configfile and --quiet both take several values
        [sys.executable, "-m", "snakemake", *targets(config["experiments"]), "-s", str(REPO / "Snakefile"),
         "-d", str(finished_run), "--configfile", str(changed), "--cores", "1", "--dry-run", "--quiet", "rules"],
        capture_output=True, text=True, timeout=300, check=False, env=emulated(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = result.stdout + result.stderr
    assert "render_twin" in jobs
    assert "simulate_twin" not in jobs and "link_video" not in jobs


def dry_run_jobs(workdir: Path, config: dict, targets_: list[str]) -> list[tuple[str, str]]:
    """(rule, experiment) of every job a dry run with `config` would run."""
    changed = workdir / "dry_run.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *targets_, "-s", str(REPO / "Snakefile"), "-d", str(workdir),
         "--configfile", str(changed), "--cores", "1", "--dry-run"],
        capture_output=True, text=True, timeout=300, check=False, env=emulated(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    jobs, rule = [], None
    for line in (result.stdout + result.stderr).splitlines():
        line = line.strip()
        if line.startswith("rule ") and line.endswith(":"):
            rule = line[5:-1]
        elif line.startswith("wildcards:") and rule:
            jobs.append((rule, line.split("experiment=")[1].split(",")[0].strip()))
            rule = None
    return jobs


def test_adding_an_experiment_runs_only_its_stages(finished_run):
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    config["experiments"]["tiny2"] = {**TINY_TWIN, "synthetic": {
        **TINY_TWIN["synthetic"], "simulation": {**TINY_TWIN["synthetic"]["simulation"], "seed": 7}}}
    wanted = targets(config["experiments"]) + ["results/tiny2/analysis/metrics.json"]
    jobs = dry_run_jobs(finished_run, config, wanted)
    assert {experiment for _, experiment in jobs} == {"tiny2"}
    assert {rule for rule, _ in jobs} == {"simulate_twin", "render_twin", "track_twin", "geometry", "train_model",
                                          "rollout_model", "rollout_box_twin", "analyse_twin"}


def test_changing_a_tracking_parameter_reruns_tracking_and_downstream_of_that_experiment(finished_run):
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    config["experiments"]["tiny"]["tracking"] = {"link": {"memory": 1}}
    jobs = dry_run_jobs(finished_run, config, targets(config["experiments"]))
    assert {experiment for _, experiment in jobs} == {"tiny"}
    assert {rule for rule, _ in jobs} == {"track_twin", "geometry", "train_model", "rollout_model", "rollout_box_twin",
                                          "analyse_twin", "rollout_box_lammps"}


@pytest.fixture
def noise_video_config(tmp_path):
    """A real-video experiment whose frames are pure noise: tracking stops with 'no particle found'."""
    import imageio.v2 as imageio
    import numpy as np

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        imageio.imwrite(frames / f"f{index}.png", rng.integers(90, 110, (48, 48)).astype(np.uint8))
    config = {"experiments": {"noise": {"video": {"path": str(frames), "pixel_size_um": 0.3, "frame_rate_hz": 10}}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def run_failing(workdir: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
         "--configfile", str(workdir / "config.yaml"), "--cores", "1", "results/noise/tracking/qc.json"],
        capture_output=True, text=True, timeout=300, check=False, env={**emulated(), **(env or {})})


def test_failing_rule_ends_with_its_clear_message_and_logs_the_traceback(noise_video_config):
    result = run_failing(noise_video_config, {"MPD_DEBUG": "0"})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("TrackingInputError: ") and "no particle found" in lines[-1]
    assert lines[-2] == "Error in rule track_video; traceback in logs/noise/track_video.log:"
    assert "Traceback" not in result.stderr
    log = (noise_video_config / "logs" / "noise" / "track_video.log").read_text()
    assert "Traceback (most recent call last)" in log and "tracking/pipeline.py" in log
    assert log.strip().splitlines()[-1] == lines[-1]
    # Snakemake's own cleanup ran: no lock is left, the next run is not refused.
    assert not any((noise_video_config / ".snakemake" / "locks").glob("*"))
    assert not (noise_video_config / "results" / "noise" / "tracking").exists()
    # both ran in their emulated env: the failure is tracking's own, not a package the env lacks
    assert_ran_emulated(noise_video_config, EMULATED_RULES["video"])


def test_debug_flag_shows_the_traceback_on_the_console(noise_video_config):
    result = run_failing(noise_video_config, {"MPD_DEBUG": "1"})
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "no particle found" in result.stderr
    # Snakemake's own closing lines are kept in debug mode.
    assert result.stderr.strip().splitlines()[-1] == "At least one job did not complete successfully."


def test_bad_config_ends_with_the_config_error(noise_video_config):
    config = yaml.safe_load((noise_video_config / "config.yaml").read_text())
    config["experiments"]["noise"]["tracking"] = {"locate": {"diamter": 5}}
    (noise_video_config / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_failing(noise_video_config, {"MPD_DEBUG": ""})
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ConfigError: ") and "experiments.noise.tracking.locate.diamter" in last


def test_every_clear_error_name_is_a_real_exception_class():
    # A renamed or moved error class would silently fall back to full tracebacks: name them exactly.
    import importlib

    from mpd.errors import CLEAR_ERRORS, is_clear

    for name in CLEAR_ERRORS:
        module, _, cls = name.rpartition(".")
        error_class = getattr(importlib.import_module(module), cls)
        assert issubclass(error_class, Exception) and is_clear(error_class("x"))
    from tracking.checks import ImplausibleResultError

    assert is_clear(ImplausibleResultError("x")) and not is_clear(ValueError("x"))
