"""Split, bounded-memory tracking (tracking.stream) gives exactly the one-job track_video's trajectories."""
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import test_tracking_pipeline as pipeline_video  # its sheared-monolayer video, at this file's sizes
import tifffile

from tracking import track_video
from tracking.io import TrackingInputError
from tracking.params import ParameterError, from_config
from tracking.stream import (
    chunk_file_name,
    link_chunk,
    link_chunk_inputs,
    link_chunks,
    link_state_path,
    locate_chunk,
    plan_tracking,
    track_video_streaming,
)

WIDTH, HEIGHT, PAD = 128, 96, 10  # px
FPS, MPP = 10.0, 0.25  # frames per second, µm per pixel
N_FRAMES = 24
COMPARED = ["particle", "frame", "x", "y", "vx", "vy"]


def simulate(n_frames=N_FRAMES, seed=0):
    """Positions (n_frames, n) of particles in rows 10 px apart: sheared, drifting, diffusing, wrapped in x."""
    x, y = pipeline_video.simulate(n_frames, seed, width=WIDTH, height=HEIGHT, pad=PAD, shear=0.03, y0=45.0,
                                   drift=(0.4, -0.05), step=0.08)
    period = WIDTH + 2 * PAD
    return np.mod(x + PAD, period) - PAD, y


def render(x, y, rng, blank=False):
    """One 12-bit frame of pixel-integrated Gaussian spots with noise (blank: no spot)."""
    return pipeline_video.render(x, y, rng, width=WIDTH, height=HEIGHT, blank=blank)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 12-bit TIFF of a sheared, drifting monolayer; frame 13 is blank (every trajectory breaks there)."""
    folder = tmp_path_factory.mktemp("stream_video")
    x, y = simulate()
    rng = np.random.default_rng(1)
    frames = np.stack([render(x[f], y[f], rng, blank=f == 13) for f in range(N_FRAMES)])
    tifffile.imwrite(folder / "frames.tif", frames, photometric="minisblack")
    return folder / "frames.tif"


BASE = {"locate": {"refine": "none", "invert": False}, "link": {"search_range_px": 4.0, "min_length": 3},
        "checks": {"max_short_fraction": None}}


def section(**changes):
    out = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        out.setdefault(key, {}).update(value)
    return out


def one_job(video, out, tracking):
    return track_video(video, out, from_config(tracking), pixel_size_um=MPP, frame_rate_hz=FPS)


def split(video, out, tracking, chunk_frames, per_chunk=False):
    """Plan, then every chunk located separately (as separate jobs would), then the gather; per_chunk: every
    chunk also linked separately (link_chunk, as the link_chunk jobs), the gather stitching them."""
    plan_path = out / "plan.json"
    plan_tracking(video, from_config(tracking), pixel_size_um=MPP, frame_rate_hz=FPS, chunk_frames=chunk_frames,
                  out_path=plan_path)
    plan = json.loads(plan_path.read_text())
    files = [locate_chunk(plan_path, i, out / "features" / chunk_file_name(i)) for i in range(len(plan["chunks"]))]
    if not per_chunk:
        return plan, link_chunks(plan_path, files, out)
    links = [link_chunk(plan_path, i, [files[j] for j in link_chunk_inputs(plan, i)], out / "links" / chunk_file_name(i))
             for i in range(len(plan["chunks"]))]
    return plan, link_chunks(plan_path, files, out, link_files=links)


def assert_same_trajectories(expected: pd.DataFrame, got: pd.DataFrame, exact=True):
    assert len(got) == len(expected) > 0
    assert list(got.columns) == list(expected.columns)
    assert (got.dtypes == expected.dtypes).all(), (got.dtypes, expected.dtypes)
    for column in COMPARED + ["species", "t", "x_px", "y_px", "mass", "size"]:
        if exact:
            np.testing.assert_array_equal(got[column].to_numpy(), expected[column].to_numpy(), err_msg=column)
        else:
            np.testing.assert_allclose(got[column].to_numpy(), expected[column].to_numpy(), rtol=0, atol=1e-9,
                                       err_msg=column)


@pytest.fixture(scope="module")
def reference(video, tmp_path_factory):
    return one_job(video, tmp_path_factory.mktemp("one_job") / "tracking", BASE)


@pytest.fixture(scope="module")
def split_run(video, tmp_path_factory):
    out = tmp_path_factory.mktemp("split") / "tracking"
    plan, result = split(video, out, BASE, chunk_frames=7)
    return out, plan, result


def test_split_into_chunks_gives_the_one_job_trajectories_exactly(reference, split_run):
    out, plan, _ = split_run
    assert len(plan["chunks"]) == 4 and plan["chunks"][0] == [0, 7] and plan["chunks"][-1] == [21, 24]
    got = pd.read_parquet(out / "trajectories.parquet")
    assert_same_trajectories(reference.trajectories, got)
    # the run has what makes the comparison mean something: velocities, breaks, trajectories across chunks
    assert got["vx"].notna().mean() > 0.9 and 13 not in set(got["frame"])
    spans = got.groupby("particle")["frame"].agg(["min", "max"])
    assert ((spans["min"] < 7) & (spans["max"] >= 7)).sum() > 10


def test_the_features_dataset_equals_the_one_job_features(reference, split_run):
    out, _, _ = split_run
    features = pd.read_parquet(out / "features")  # the folder read lazily as one dataset
    expected = reference.features
    assert len(features) == len(expected)
    features = features.sort_values(["frame", "y_px", "x_px"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(features[expected.columns.tolist()], expected)
    assert sorted(p.name for p in (out / "features").iterdir()) == [chunk_file_name(i) for i in range(4)]


def test_outputs_are_lazily_readable_and_qc_says_what_is_left_out(reference, split_run):
    out, plan, _ = split_run
    parquet = pq.ParquetFile(out / "trajectories.parquet")
    assert parquet.num_row_groups == len(plan["chunks"]) == 4
    first = parquet.read_row_group(0).to_pandas()
    assert first["frame"].max() < plan["frame_numbers"][7]
    qc = json.loads((out / "qc.json").read_text())
    one = reference.qc
    for key in ("frames_analysed", "features", "frames_without_features", "features_per_frame", "trajectories",
                "mean_trajectory_length_frames", "median_trajectory_length_frames", "fraction_of_frames_tracked",
                "fraction_of_features_in_trajectories", "trajectory_filter", "species", "auto", "checks"):
        assert qc[key] == json.loads(json.dumps(one[key])), key
    assert qc["frames_without_features"]["frames"] == [13] and qc["warnings"] == one["warnings"]
    # one builder (tracking.qc.report) for both: the same keys in the same order, split's own record added
    assert [key for key in qc if key != "split"] == list(one)
    assert "velocity_noise" in qc["split"]["computed_on_part"] and qc["split"]["chunks"] == 4
    assert sorted(p.name for p in (out / "qc").iterdir()) == sorted(one["figures"])
    assert not [p for p in out.iterdir() if p.name.startswith(".link-")]  # the gather's scratch is gone


def test_one_chunk_and_small_chunks_agree(video, split_run, tmp_path):
    out, _, _ = split_run
    whole = track_video_streaming(video, tmp_path / "whole", from_config(BASE), pixel_size_um=MPP, frame_rate_hz=FPS,
                                  chunk_frames=N_FRAMES)
    assert pq.ParquetFile(whole.trajectories_path).num_row_groups == 1
    assert_same_trajectories(pd.read_parquet(out / "trajectories.parquet"), whole.trajectories)


@pytest.mark.parametrize("changes", [
    {"link": {"predictor": "affine", "search_range_px": 3.0}},
    {"link": {"predictor": "nearest_velocity", "search_range_px": 3.0, "drift": "median"},
     "velocity": {"smoothing": "savgol", "window": 5}},
    {"link": {"search_range_um": "auto", "search_range_px": None, "drift": "mean", "drift_from": "all",
              "memory": 2}, "trajectory_filter": {"per": "observation", "min_mass": 1000.0}},
    {"locate": {"flatten": "gaussian"}, "frame_range": {"start": 1, "step": 2}, "link": {"memory": 1},
     "trajectory_filter": {"min_size": 1.0}},
], ids=["affine", "nearest_velocity-median_drift-savgol", "auto_range-mean_drift-memory-observation_filter",
        "flatten-frame_step-trajectory_filter"])
def test_predictors_drift_and_filters_agree_with_the_one_job(video, tmp_path, changes):
    tracking = section(**changes)
    if tracking["link"].get("search_range_px") is None:
        tracking["link"].pop("search_range_px")
    expected = one_job(video, tmp_path / "one", tracking)
    _, result = split(video, tmp_path / "split", tracking, chunk_frames=5)
    got = pd.read_parquet(result.trajectories_path)
    # equal to rounding only where the one-job path's arithmetic depends on the whole table: a mean drift's
    # rolling sums, and the Savitzky-Golay time step (each run's span over its length, a run being cut at the halo)
    exact = tracking["link"].get("drift") != "mean" and "velocity" not in tracking
    assert_same_trajectories(expected.trajectories, got, exact=exact)
    if "drift" in tracking["link"]:
        one, two = pd.read_csv(tmp_path / "one" / "drift.csv"), pd.read_csv(tmp_path / "split" / "drift.csv")
        np.testing.assert_allclose(two.to_numpy(), one.to_numpy(), rtol=0, atol=1e-9)


def test_psf_fit_is_refined_per_chunk_with_the_plan_s_profile(video, tmp_path):
    tracking = section(locate={"refine": "psf_fit"})
    expected = one_job(video, tmp_path / "one", tracking)
    plan, result = split(video, tmp_path / "split", tracking, chunk_frames=8)
    assert "table" in plan["refine"]
    assert_same_trajectories(expected.trajectories, pd.read_parquet(result.trajectories_path))
    assert result.qc["refine"]["refined"] == expected.qc["refine"]["refined"] > 0


def test_bad_settings_and_inputs_are_one_clear_error(video, split_run, tmp_path):
    with pytest.raises(ParameterError, match="tracking.chunk_frames"):
        from_config({"chunk_frames": 1})
    with pytest.raises(ParameterError, match="tracking.chunk_frames"):
        plan_tracking(video, from_config(BASE), pixel_size_um=MPP, frame_rate_hz=FPS, chunk_frames=0)
    with pytest.raises(ParameterError, match="tracking.link.drift: registration"):
        plan_tracking(video, from_config(section(link={"drift": "registration"})), pixel_size_um=MPP,
                      frame_rate_hz=FPS, chunk_frames=5)
    out, plan, _ = split_run
    files = [out / "features" / chunk_file_name(i) for i in range(4)]
    with pytest.raises(TrackingInputError, match="one file per chunk"):
        link_chunks(plan, files[:3], tmp_path / "x")
    with pytest.raises(TrackingInputError, match="outside its chunk"):
        link_chunks(plan, [files[1], files[0], *files[2:]], tmp_path / "x")
    with pytest.raises(TrackingInputError, match="not a chunk of the plan"):
        locate_chunk(plan, 4, tmp_path / "c.parquet")


# --- linking per chunk (link_chunk jobs), stitched by the gather ---------------------------------------------------

@pytest.mark.parametrize("changes", [
    {},
    {"link": {"memory": 2}},
    {"link": {"predictor": "affine", "search_range_px": 3.0, "memory": 1}},
    {"link": {"predictor": "nearest_velocity", "search_range_px": 3.0, "drift": "median"}},
    {"link": {"search_range_um": "auto", "search_range_px": None, "memory": 2}, "frame_range": {"start": 1, "step": 2}},
], ids=["plain", "memory", "affine-memory", "nearest_velocity-median_drift", "auto_range-memory-frame_step"])
def test_chunks_linked_separately_give_the_one_job_trajectories_exactly(video, tmp_path, changes):
    tracking = section(**changes)
    if tracking["link"].get("search_range_px", 0) is None:
        tracking["link"].pop("search_range_px")
    expected = one_job(video, tmp_path / "one", tracking)
    plan, result = split(video, tmp_path / "split", tracking, chunk_frames=7, per_chunk=True)
    got = pd.read_parquet(result.trajectories_path)
    assert_same_trajectories(expected.trajectories, got)
    # every chunk's own links were used: its linker started in the state its predecessor ended in
    link = result.qc["split"]["link"]
    assert link["per_chunk"] is True and link["boundaries"] == len(plan["chunks"]) - 1 >= 1
    assert link["relinked"] == [] and link["boundaries_relinked"] == 0
    assert plan["link_overlap_frames"] == max(tracking["link"].get("memory", 0) + 2, 5)
    for key in ("auto", "checks", "trajectories", "trajectory_filter", "species"):
        assert result.qc[key] == json.loads(json.dumps(expected.qc[key])), key
    assert result.qc["resolved"]["link"] == json.loads(json.dumps(expected.qc["resolved"]["link"]))
    # a link file holds the chunk's own frames only, with ids local to its job, which the gather mapped
    last = len(plan["chunks"]) - 1
    own = pd.read_parquet(tmp_path / "split" / "links" / chunk_file_name(last))
    first, stop = plan["chunks"][last]
    assert set(own["frame"]) <= set(plan["frame_numbers"][first:stop])
    mapped = own.merge(got[["frame", "x_px", "y_px", "particle"]], on=["frame", "x_px", "y_px"], suffixes=("", "_final"))
    assert len(mapped) > 0
    if "frame_range" not in changes:  # (with a step of 2, every trajectory breaks at the blank frame 13)
        assert (mapped["particle"] != mapped["particle_final"]).any()


@pytest.mark.parametrize("link", [
    {"memory": 2},
    {"predictor": "affine", "search_range_px": 3.0, "memory": 1},
    {"predictor": "nearest_velocity", "search_range_px": 3.0, "memory": 2},
], ids=["plain", "affine", "nearest_velocity"])
def test_a_boundary_the_warm_up_does_not_reach_is_relinked_from_the_previous_state_exactly(video, tmp_path, link):
    """Frame 13 is blank: with memory the unsplit run bridges it, continuing trajectories from frame 12 to 14. The
    chunk starting at frame 14 warms up on one frame only (link_overlap_frames 1), frame 13, sees nothing and
    starts every trajectory anew: the gather finds its state differs and links it again from chunk 1's."""
    tracking = {**section(link=link), "link_overlap_frames": 1}
    expected = one_job(video, tmp_path / "one", tracking)
    reference = expected.trajectories.sort_values(["particle", "frame"])
    same = reference["particle"].to_numpy()[1:] == reference["particle"].to_numpy()[:-1]
    bridged = same & (reference["frame"].to_numpy()[:-1] == 12) & (reference["frame"].to_numpy()[1:] == 14)
    assert bridged.sum() > 10  # what the job for frames 14 .. 20 cannot know
    plan, result = split(video, tmp_path / "split", tracking, chunk_frames=7, per_chunk=True)
    assert plan["link_overlap_frames"] == 1 and plan["chunks"][2] == [14, 21]
    assert_same_trajectories(expected.trajectories, pd.read_parquet(result.trajectories_path))
    link_record = result.qc["split"]["link"]
    relinked = {r["chunk"]: r for r in link_record["relinked"]}
    assert 2 in relinked and relinked[2]["first_frame"] == 14 and "differs" in relinked[2]["reason"]
    assert link_record["boundaries_relinked"] == len(relinked) >= 1
    on_disk = json.loads((tmp_path / "split" / "qc.json").read_text())["split"]["link"]
    assert on_disk == json.loads(json.dumps(link_record))


def test_the_gather_links_serially_without_link_files(split_run):
    _, _, result = split_run
    link = result.qc["split"]["link"]
    assert link["per_chunk"] is False and link["relinked"] == [] and link["boundaries"] == 3


def test_link_files_are_checked_against_the_plan(video, split_run, tmp_path):
    out, plan, _ = split_run
    files = [out / "features" / chunk_file_name(i) for i in range(4)]
    links = [link_chunk(plan, i, [files[j] for j in link_chunk_inputs(plan, i)], tmp_path / "links" / chunk_file_name(i))
             for i in range(4)]
    assert all(link_state_path(p).is_file() for p in links)
    with pytest.raises(TrackingInputError, match="one file per chunk"):
        link_chunks(plan, files, tmp_path / "x", link_files=links[:3])
    with pytest.raises(TrackingInputError, match="another plan or chunk"):
        link_chunks(plan, files, tmp_path / "x", link_files=[links[1], links[0], *links[2:]])
    other = plan_tracking(video, from_config({**BASE, "link_overlap_frames": 3}), pixel_size_um=MPP,
                          frame_rate_hz=FPS, chunk_frames=7)
    with pytest.raises(TrackingInputError, match="another plan or chunk"):
        link_chunks(other, files, tmp_path / "x", link_files=links)
    with pytest.raises(TrackingInputError, match="link_chunk_inputs"):
        link_chunk(plan, 2, files, tmp_path / "y.parquet")
    with pytest.raises(ParameterError, match="tracking.link_overlap_frames"):
        from_config({**BASE, "link_overlap_frames": 0})
    assert link_chunk_inputs(plan, 0) == [0] and link_chunk_inputs(plan, 2) == [1, 2]


def test_a_bootstrap_pair_across_chunks_is_linked_again_in_the_gather(video, tmp_path):
    """Frames 13 .. 23: the first chunk (13, 14) holds one non-empty frame, so the unsplit run bootstraps its
    predictor on frames 14 and 15, which no single link job sees first: the gather links that chunk again."""
    tracking = {**section(link={"predictor": "affine", "search_range_px": 3.0}), "frame_range": {"start": 13}}
    expected = one_job(video, tmp_path / "one", tracking)
    plan, result = split(video, tmp_path / "split", tracking, chunk_frames=2, per_chunk=True)
    assert plan["chunks"][0] == [0, 2] and plan["frame_numbers"][:2] == [13, 14]
    assert_same_trajectories(expected.trajectories, pd.read_parquet(result.trajectories_path))
    link = result.qc["split"]["link"]
    assert [r["chunk"] for r in link["relinked"]] == [0] and "bootstrapped" in link["relinked"][0]["reason"]
    assert link["boundaries_relinked"] == 0
    assert result.qc["resolved"]["link"] == json.loads(json.dumps(expected.qc["resolved"]["link"]))


def test_the_gather_reads_linked_chunks_forward_holding_two_chunks_and_a_tail(tmp_path):
    """Pass 2's reader: every range exact, at most two whole chunks plus the previous one's last frames held,
    whatever the number of chunks; a range that starts earlier (the next pass) reads its chunks again."""
    from tracking.gather import LINKED_COLUMNS, _Linked, _Pass1

    n_frames, chunk, per_frame, halo = 40, 8, 5, 2
    frame_numbers = np.arange(100, 100 + 2 * n_frames, 2)  # a frame step of 2
    table = pd.DataFrame({c: np.arange(n_frames * per_frame, dtype=float) for c in LINKED_COLUMNS})
    table["frame"] = np.repeat(frame_numbers, per_frame)
    table["particle"] = np.tile(np.arange(per_frame), n_frames)
    chunks = [[a, min(a + chunk, n_frames)] for a in range(0, n_frames, chunk)]
    sink = _Pass1(tmp_path, len(chunks), int(frame_numbers[0]), filter_sums=False)
    for i, (a, b) in enumerate(chunks):
        sink.write(i, table[table["frame"].between(frame_numbers[a], frame_numbers[b - 1])].reset_index(drop=True))
    linked = _Linked(sink, chunks, frame_numbers)

    def expected(lo, hi):
        lo, hi = max(lo, 0), min(hi, n_frames)
        return table[table["frame"].between(frame_numbers[lo], frame_numbers[hi - 1])].reset_index(drop=True)

    for _ in range(2):  # pass 2a, then pass 2b from the start again
        for a, b in chunks:
            pd.testing.assert_frame_equal(linked.rows(a - halo, b + halo), expected(a - halo, b + halo))
            held = sum(len(t) for t in linked.cache.values())
            assert held <= (2 * chunk + halo) * per_frame
