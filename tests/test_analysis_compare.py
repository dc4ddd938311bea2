"""Relative L2 errors on known pairs, and the comparison and stage outputs end to end on constructed data."""
import json

import numpy as np
import pandas as pd
import pytest

from analysis.compare import METRIC_KEYS, compare, curve_error, relative_l2
from analysis.fidelity import TARGETS
from analysis.figures import FIGURES
from analysis.stage import analyse_experiment
from analysis.synthetic import triangular_lattice


def test_relative_l2_is_zero_for_identical_curves_and_the_formula_otherwise():
    f = np.sin(np.linspace(0, 3, 50)) + 2.0
    assert relative_l2(f, f) == 0.0
    assert relative_l2(np.full(10, 1.1), np.ones(10)) == pytest.approx(0.1)
    assert relative_l2([3.0, 5.0], [3.0, 4.0]) == pytest.approx(1.0 / 5.0)  # |(0, 1)| / |(3, 4)|
    assert relative_l2(np.zeros(5), np.arange(5.0)) == pytest.approx(1.0)
    assert np.isnan(relative_l2(np.ones(3), np.zeros(3)))  # undefined against a zero reference
    assert relative_l2([1.0, np.nan, 2.0], [1.0, 5.0, 1.0]) == pytest.approx(1 / np.sqrt(2))  # NaN pairs skipped
    with pytest.raises(ValueError):
        relative_l2(np.ones(3), np.ones(4))


def test_curve_error_interpolates_onto_the_reference_grid():
    x_ref = np.linspace(0, 10, 101)
    x_c = np.linspace(-1, 12, 1301)
    assert curve_error(x_ref, 2 * x_ref + 1, x_c, 2 * x_c + 1) == pytest.approx(0.0, abs=1e-12)
    ref = np.ones_like(x_ref)
    assert curve_error(x_ref, ref, x_c, 1.2 * np.ones_like(x_c)) == pytest.approx(0.2)
    # Only the overlap counts: a candidate on [0, 5] is compared on [0, 5].
    x_half = np.linspace(0, 5, 11)
    assert curve_error(x_ref, np.where(x_ref <= 5, 1.0, 100.0), x_half, np.ones(11)) == pytest.approx(0.0)


def sheared_sample(n_frames=31, fps=20.0, period=1.0, seed=0, noise_um=0.0, box_origin=(0.0, 0.0)):
    """A jittered triangular packing (two species) under cyclic affine shear about y = 0 plus thermal motion."""
    rng = np.random.default_rng(seed)
    base = triangular_lattice(26, 30, spacing=4.0) + rng.normal(0, 0.25, (780, 2))
    species = rng.integers(0, 2, len(base))
    t = np.arange(n_frames) / fps
    gamma = 0.04 * np.sin(2 * np.pi * t / period)
    walk = np.cumsum(rng.normal(0, 0.03, (n_frames, len(base), 2)), axis=0)
    pos = base[None] + walk
    pos[:, :, 0] += gamma[:, None] * pos[:, :, 1]
    pos += rng.normal(0, noise_um, pos.shape) if noise_um else 0.0
    vel = np.gradient(pos, t, axis=0)
    f = np.repeat(np.arange(n_frames), len(base))
    table = pd.DataFrame({"frame": f, "t": f / fps, "particle": np.tile(np.arange(len(base)), n_frames),
                          "species": np.tile(species, n_frames).astype(np.int8),
                          "diameter": np.tile(np.where(species == 0, 3.0, 4.2), n_frames),
                          "x": pos[:, :, 0].ravel() + box_origin[0], "y": pos[:, :, 1].ravel() + box_origin[1],
                          "vx": vel[:, :, 0].ravel(), "vy": vel[:, :, 1].ravel()})
    strain = pd.DataFrame({"frame": np.arange(n_frames), "t": t, "strain": gamma})
    return table, strain


def in_window(table, window):
    x0, x1, y0, y1 = window
    return table[table["x"].between(x0, x1) & table["y"].between(y0, y1)].reset_index(drop=True)


def test_compare_writes_metrics_tables_and_figures_atomically(tmp_path):
    window = (20.0, 70.0, 20.0, 70.0)
    sample, strain = sheared_sample()
    reference = in_window(sample, window)
    noisy = in_window(sheared_sample(noise_um=0.1)[0], window)
    out = tmp_path / "analysis"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    doc = compare(reference, {"copy": reference.copy(), "noisy": noisy}, out, window=window, strain=strain,
                  settings={"max_lag_frames": 20})
    assert not (out / "stale.txt").exists()  # replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analysis"]  # no temporary folder left
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["errors"] == doc["errors"]
    assert set(on_disk) >= {"schema_version", "reference", "datasets", "window_um", "settings", "summary", "errors"}
    assert on_disk["datasets"] == ["copy", "experiment", "noisy"]
    copy, bad = on_disk["errors"]["experiment"]["copy"], on_disk["errors"]["experiment"]["noisy"]
    assert set(METRIC_KEYS) <= set(copy) and {"rdf_0-0", "rdf_0-1", "rdf_1-1"} <= set(copy)
    for key, value in copy.items():
        assert value is None or value == 0.0, key  # identical data: zero error (None where the reference is 0)
    assert bad["msd_nonaffine"] > 0.1 and bad["rdf"] > 0.0
    s = on_disk["settings"]
    assert s["period_s"] == pytest.approx(1.0, rel=1e-3)
    assert s["d2min_threshold_um2"] == pytest.approx((0.1 * s["length_scale_um"]) ** 2)
    assert s["length_scale_um"] == pytest.approx(4.0, rel=0.05)  # the packing's spacing
    assert {p.name for p in (out / "figures").iterdir()} == {f"{name}.png" for name in FIGURES}
    for name in ("rdf", "msd", "msd_nonaffine", "vacf", "vacf_nonaffine", "per_frame", "by_phase"):
        assert (out / "tables" / "noisy" / f"{name}.csv").is_file()
    per_frame = pd.read_csv(out / "tables" / "experiment" / "per_frame.csv")
    assert {"rearranging_fraction", "defect_fraction", "n_dislocations", "psi6_mean_abs", "phase"} <= set(per_frame)


def test_stage_with_experiment_truth_and_rollout(tmp_path):
    box_origin = (10.0, 12.0)  # camera pixel (0, 0) sits at these box coordinates
    truth, strain = sheared_sample(box_origin=(0.0, 0.0))
    video = {"pixel_size_um": 0.5, "width_px": 101, "height_px": 101, "frame_rate_hz": 20.0,
             "fov_origin_um": list(box_origin)}
    truth_meta = {"lx_um": 104.0, "ly_um": 104.0, "xlo_um": 0.0, "ylo_um": 0.0}
    camera = truth.assign(x=truth["x"] - box_origin[0], y=truth["y"] - box_origin[1])
    experiment = in_window(camera, (0, 50, 0, 50)).drop(columns=["species", "diameter"])
    experiment = experiment.sample(frac=0.97, random_state=1)  # the tracker misses a few particles
    rng = np.random.default_rng(7)
    rollout = in_window(camera, (0, 50, 0, 50))
    rollout = rollout.assign(x=rollout["x"] + rng.normal(0, 0.05, len(rollout)))
    strain_path = tmp_path / "strain.csv"
    strain.to_csv(strain_path, index=False)
    out = tmp_path / "results" / "exp" / "analysis"

    doc = analyse_experiment(experiment, video, out, truth=truth, truth_metadata=truth_meta, strain=strain_path,
                             rollout=rollout, settings={"max_lag_frames": 10})
    assert sorted(doc["errors"]) == ["experiment", "truth"]
    # the rollout and the null model are judged over the rollout's frames
    assert sorted(doc["errors"]["experiment"]) == ["null", "rollout", "truth"]
    assert sorted(doc["errors"]["truth"]) == ["experiment", "null", "rollout"]
    # the fidelity section: every target, met or missed, against the truth; a rollout that is the truth
    # plus a little noise meets the structural targets
    window = doc["fidelity"]["window"]
    assert window["reference"] == "truth" and [r["metric"] for r in window["rows"]] == list(TARGETS)
    rows = {r["metric"]: r for r in window["rows"]}
    assert rows["rdf"]["met"]["rollout"] and rows["nn_distance_distribution"]["met"]["rollout"]
    assert set(rows["rdf"]["values"]) == {"rollout", "null"} and window["frames"] == [0, int(truth["frame"].max())]
    assert doc["inputs"]["truth_domain"] == "field of view"
    assert doc["window_um"] == [0.0, 50.0, 0.0, 50.0]
    # Truth seen through the same window: same particles as the experiment up to the missed 3%.
    n_truth = doc["summary"]["truth"]["n_particles_mean"]
    assert doc["summary"]["experiment"]["n_particles_mean"] == pytest.approx(0.97 * n_truth, rel=0.02)
    assert doc["errors"]["truth"]["experiment"]["rdf"] < 0.1
    assert json.loads((out / "metrics.json").read_text())["errors"] == doc["errors"]

    assert {p.name for p in (out / "figures").iterdir()} == \
        {f"{name}.png" for name in FIGURES} | {"fidelity_window.png", "movie.mp4", "movie.html"}

    # Without a rollout (no model yet) the stage still runs on experiment + truth.
    doc = analyse_experiment(experiment, video, out, truth=truth, truth_metadata=truth_meta, strain=strain,
                             settings={"max_lag_frames": 10, "frame_step": 4}, figures=False)
    assert sorted(doc["errors"]["experiment"]) == ["truth"] and doc["inputs"]["rollout"] is None
    assert not (out / "figures").exists() and (out / "tables" / "truth" / "rdf.csv").is_file()


def test_every_figure_has_a_report_caption():
    from pathlib import Path

    report = Path(__file__).resolve().parents[1] / "workflow" / "report"
    qc = ["qc_" + name for name in ("annotated_frame", "mass_size", "subpixel_bias", "trajectories",
                                     "features_per_frame")]
    for name in list(FIGURES) + ["fidelity_window", "fidelity_periodic_box", "movie", "box_figure", "training"] + qc:
        caption = report / f"{name}.rst"
        assert caption.is_file(), caption
        assert len(caption.read_text().split()) > 40  # a real explanation, not a title
    # the tracking stage writes exactly the QC figures the workflow puts in the report
    from tracking import qc as tracking_qc

    smk = (report.parent / "rules" / "common.smk").read_text()
    for name in qc:
        assert f'"{name[3:]}"' in smk and f"{name[3:]}.png" in Path(tracking_qc.__file__).read_text()


def test_training_curves_figure(tmp_path):
    from analysis.figures import training_figure

    log = pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [np.nan, -1.0, -2.0], "val_loss": [0.5, -0.8, -1.9],
                        "train_cage": [np.nan, 0.3, 0.1], "val_cage": [1.0, 0.2, 0.05]})
    training_figure(log, tmp_path / "training.png")
    training_figure(log.drop(columns=["train_cage", "val_cage"]), tmp_path / "plain.png")
    assert (tmp_path / "training.png").stat().st_size > 1000 and (tmp_path / "plain.png").is_file()


def _stage_inputs(tmp_path):
    truth, strain = sheared_sample(box_origin=(0.0, 0.0))
    video = {"pixel_size_um": 0.5, "width_px": 101, "height_px": 101, "frame_rate_hz": 20.0,
             "fov_origin_um": [10.0, 12.0]}
    truth_meta = {"lx_um": 104.0, "ly_um": 104.0, "xlo_um": 0.0, "ylo_um": 0.0}
    camera = truth.assign(x=truth["x"] - 10.0, y=truth["y"] - 12.0)
    experiment = in_window(camera, (0, 50, 0, 50)).drop(columns=["species", "diameter"])
    return truth, strain, video, truth_meta, experiment


def test_a_rollout_status_and_verdict_reach_metrics_and_figures_and_maps_show_a_shared_frame(tmp_path):
    truth, strain, video, truth_meta, experiment = _stage_inputs(tmp_path)
    last = int(experiment["frame"].max())
    rollout = experiment[experiment["frame"] >= last - 5]  # the rollout covers the last frames only
    status = {"status": "diverged", "message": "rollout diverged at frame 99: energy per particle left",
              "diverged_at_frame": 99}
    out = tmp_path / "analysis"
    doc = analyse_experiment(experiment, video, out, truth=truth, truth_metadata=truth_meta, strain=strain,
                             rollout=rollout, rollout_status=status, settings={"max_lag_frames": 4})
    assert doc["rollout_status"]["window"]["status"] == "diverged"
    assert doc["rollout_status"]["window"]["diverged_at_frame"] == 99
    written = json.loads((out / "metrics.json").read_text())
    assert written["rollout_status"]["window"]["analysed"] is True
    # a diverged rollout meets no target, and says so
    assert not any(r["met"]["rollout"] for r in written["fidelity"]["window"]["rows"])
    from analysis.stage import rollout_note

    note = rollout_note(written["rollout_status"], written["fidelity"])
    assert "DIVERGED" in note and "0 of 10 targets met" in note and "missed: rdf" in note


def _measure(table):
    from analysis.measure import Settings, measure, resolve_settings

    settings = resolve_settings(Settings(max_lag_frames=4), table, window=(0, 50, 0, 50))
    return measure(table, settings, name="x", window=(0, 50, 0, 50))


def test_a_rollout_of_one_frame_is_reported_not_analysed_and_stale_tables_go(tmp_path):
    truth, strain, video, truth_meta, experiment = _stage_inputs(tmp_path)
    out = tmp_path / "analysis"
    stale = out / "tables" / "rollout"
    stale.mkdir(parents=True)
    (stale / "rdf.csv").write_text("r,g\n1,1\n")
    rollout = experiment[experiment["frame"] == experiment["frame"].min()]  # diverged at its first step
    status = {"status": "diverged", "message": "rollout diverged at frame 1", "diverged_at_frame": 1}
    doc = analyse_experiment(experiment, video, out, truth=truth, truth_metadata=truth_meta, strain=strain,
                             rollout=rollout, rollout_status=status, settings={"max_lag_frames": 4},
                             figures=False)
    assert doc["rollout_status"]["window"] == {**status, "analysed": False}
    assert not stale.exists() and (out / "tables" / "experiment" / "rdf.csv").is_file()
    assert "rollout" not in doc["summary"]


def test_map_frame_is_chosen_among_the_frames_every_dataset_has(tmp_path):
    from analysis.compare import common_frames, map_frame_of

    experiment = _stage_inputs(tmp_path)[4]
    last = int(experiment["frame"].max())
    whole, tail = _measure(experiment), _measure(experiment[experiment["frame"] >= last - 5])
    frames = common_frames({"experiment": whole, "rollout": tail})
    assert len(frames) and frames.min() >= last - 5
    assert map_frame_of(whole, frames) in set(frames.tolist())
