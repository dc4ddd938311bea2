"""The cage objective (mpd.cage): windows of consecutive training frames, a differentiable rollout that is the
production rollout's, statistics that are the data's when the displacements are, and gradients that reach the
parameters setting the cage's width."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_training_support import H_UM, RATE, SMALL_NETWORK, lattice_trajectories

from mpd.cage import (
    CageObjective,
    cage_loss,
    cage_statistics,
    data_displacements,
    load_window,
    rollout_displacements,
    window_starts,
)
from mpd.geometry.domain import Box
from mpd.geometry.loader import SnapshotPairDataset
from mpd.geometry.stage import compute_geometry
from mpd.model import MetriplecticModel
from mpd.params import NetworkParams, RolloutParams
from mpd.rollout import rollout
from mpd.training import build_model, dataset_frames, model_kwargs, observed_from_dataset, set_positive_scalar

WINDOW = (4.0, 36.0, 3.0, 28.0)  # µm
STEPS = 5


def window_geometry(tmp_path_factory, name: str, **lattice) -> SnapshotPairDataset:
    """A lattice seen through WINDOW (particles enter and leave), all frames in one split."""
    root = tmp_path_factory.mktemp(name)
    traj = lattice_trajectories(window=WINDOW, seed=3, **lattice)
    geometry = compute_geometry(traj, root / "geometry", h_um=H_UM, frame_rate_hz=RATE, window=WINDOW,
                                split_fractions=(1.0, 0.0, 0.0))
    return SnapshotPairDataset(geometry, "train", dtype=torch.float64)


@pytest.fixture(scope="module")
def window_dataset(tmp_path_factory):
    """A drifting lattice: 24 frames."""
    return window_geometry(tmp_path_factory, "cage", n_frames=24, drift_um_s=(4.0, 1.0))


@pytest.fixture(scope="module")
def still_dataset(tmp_path_factory):
    """The lattice random-walking in place: no particle crosses into the exterior band within a window."""
    return window_geometry(tmp_path_factory, "cage_still", n_frames=12, step_um=0.02)


@pytest.fixture(scope="module")
def box_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cage_box")
    box = Box(14 * 3.0, 12 * 3.0 * np.sqrt(3) / 2)
    traj = lattice_trajectories(n_frames=12, box=box, seed=4)
    boxes = pd.DataFrame({"frame": np.arange(12), "lx": box.lx, "ly": box.ly, "xy": 0.0})
    geometry = compute_geometry(traj, root / "geometry", h_um=H_UM, frame_rate_hz=RATE, box=boxes,
                                split_fractions=(1.0, 0.0, 0.0))
    return SnapshotPairDataset(geometry, "train", dtype=torch.float64)


def small_model(dataset, seed=0) -> MetriplecticModel:
    torch.manual_seed(seed)
    kwargs = model_kwargs(NetworkParams.from_config(SMALL_NETWORK), 1.0, dataset.n_species)
    model = build_model(kwargs, torch.float64, torch.device("cpu"))
    set_positive_scalar(model.log_mass, 30.0)
    set_positive_scalar(model.log_k_B, 1e-4)
    model.eval()
    return model


def a_window(dataset, start=None):
    frames = dataset_frames(dataset)
    starts = window_starts(dataset, STEPS)
    assert starts, "the fixture has runs of consecutive frames"
    window = load_window(dataset, starts[len(starts) // 2] if start is None else start, STEPS,
                         lambda f: frames.box(f), torch.float64, torch.device("cpu"))
    assert window is not None
    return window


def test_window_starts_are_runs_of_consecutive_frames(window_dataset):
    frame = window_dataset.index["frame"].to_numpy()
    starts = window_starts(window_dataset, STEPS)
    assert starts
    for k in starts:
        assert list(frame[k:k + STEPS]) == list(range(frame[k], frame[k] + STEPS))
    assert window_starts(window_dataset, len(window_dataset) + 1) == []


def test_the_data_matched_by_the_data_gives_a_zero_loss_and_positive_statistics(window_dataset):
    window = a_window(window_dataset)
    data = data_displacements(window)
    relative, single = cage_statistics(data, window)
    assert relative.shape == (STEPS,) and single.shape == (STEPS,)
    assert (relative > 0).all() and (single > 0).all()
    # the lattice random-walks: mean square displacements grow with the lag
    assert single[-1] > 2 * single[0]
    assert window.core.sum() >= 3 and not window.core[~window.predicted].any()


def test_noise_free_cage_rollout_is_the_production_rollout(still_dataset):
    """Step by step (noise off, float64) the differentiable rollout moves the core particles as mpd.rollout does
    (the cage rollout keeps its first frame's predicted set: no hand-over, which the core is away from)."""
    model = small_model(still_dataset)
    set_positive_scalar(model.log_mass, 300.0)  # the untrained forces move particles gently: no hand-over
    starts = window_starts(still_dataset, STEPS)
    k0 = starts[len(starts) // 2]
    start = int(still_dataset.index["frame"].iloc[k0])
    window = a_window(still_dataset, k0)
    mine = rollout_displacements(model, window, torch.Generator().manual_seed(0), noise=False).detach().numpy()
    frames = dataset_frames(still_dataset)
    observed, interior = observed_from_dataset(still_dataset, list(range(k0, k0 + STEPS)), frames)
    result = rollout(model, observed, RolloutParams(dtype="float64", noise=False, progress=False),
                     start_frame=start, n_frames=STEPS, predicted=interior[start], device="cpu")
    assert result.status["handovers"] <= 2 and result.status["status"] == "completed"
    ids = still_dataset[k0]["particle"].numpy()
    table = result.frames.set_index(["frame", "particle"])
    kept = window.core.numpy().copy()  # away from the band, where a hand-over would change a neighbour
    moved = 0.0
    for k in (1, 2):  # later, the rollout's hand-overs and new arrivals at the band reach the core
        rows = table.loc[start + k].reindex(ids)
        kept &= rows["predicted"].fillna(False).to_numpy(bool)
        theirs = rows[["x", "y"]].to_numpy() - window.x[0].numpy()
        np.testing.assert_allclose(mine[k][kept], theirs[kept], atol=1e-9, err_msg=f"step {k}")
        moved = max(moved, float(np.abs(theirs[kept]).max()))
    assert kept.sum() >= 10 and moved > 1e-4  # the model does move them


def test_gradients_reach_the_noise_the_mass_and_the_energy(window_dataset):
    model = small_model(window_dataset)
    model.train()
    loss = cage_loss(model, [a_window(window_dataset)], torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    for name in ("log_k_B.raw", "log_mass.raw", "bath.log_gamma.raw"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    energy = [p.grad for n, p in model.named_parameters() if n.startswith(("U_vol", "U_dev", "kernel"))]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in energy)


def test_a_hotter_model_has_wider_cages(window_dataset):
    window = a_window(window_dataset)
    widths = []
    for k_B in (1e-2, 1.0):  # heavy particles: the noise, not the untrained forces, moves them
        model = small_model(window_dataset)
        set_positive_scalar(model.log_mass, 1e3)
        set_positive_scalar(model.log_k_B, k_B)
        with torch.enable_grad():
            _, single = cage_statistics(rollout_displacements(model, window, torch.Generator().manual_seed(2)),
                                        window)
        widths.append(float(single[-1]))
    assert widths[1] > 30 * widths[0], widths


def test_periodic_windows_wrap_and_measure_by_minimum_image(box_dataset):
    window = a_window(box_dataset)
    assert window.boxes[0] is not None and bool(window.core.all() == window.predicted.all())
    relative, single = cage_statistics(data_displacements(window), window)
    # random-walk steps of 0.08 µm per frame: nothing near a box length
    assert float(single.max()) < 1.0 and float(relative.max()) < 1.0
    model = small_model(box_dataset)
    with torch.enable_grad():
        moved = rollout_displacements(model, window, torch.Generator().manual_seed(3))
    assert torch.isfinite(moved).all()


def test_the_objective_draws_the_same_windows_and_noise_for_the_same_step(window_dataset):
    model = small_model(window_dataset)
    frames = dataset_frames(window_dataset)
    objective = CageObjective(window_dataset, lambda f: frames.box(f), STEPS, torch.float64, torch.device("cpu"), 7)
    a = objective.term(model, epoch=2, step=4)
    b = objective.term(model, epoch=2, step=4)
    c = objective.term(model, epoch=3, step=4)
    assert float(a) == float(b) and float(a) != float(c)
    assert np.isfinite(objective.evaluate(model))


def test_temperature_calibration_brings_a_too_hot_model_to_the_data(window_dataset):
    """A model whose noise is far too hot for the data: after calibration its settled rollouts' relative
    displacements match the data's within 5 %, and k_B went down (by fixed-point iterations)."""
    from mpd.cage import calibrate_temperature, relaxed_cage_ratio

    model = small_model(window_dataset)
    set_positive_scalar(model.log_mass, 1e3)  # noise-dominated motion, like the random-walking lattice
    set_positive_scalar(model.log_k_B, 0.3)
    frames = dataset_frames(window_dataset)
    starts = window_starts(window_dataset, 12)
    window = load_window(window_dataset, starts[-1], 12, lambda f: frames.box(f), torch.float64, torch.device("cpu"))
    before = relaxed_cage_ratio(model, window, 3, 4, torch.Generator().manual_seed(0))
    assert before > 1.3
    record = calibrate_temperature(model, [window], lag=3, settle=4, iterations=6)
    after = relaxed_cage_ratio(model, window, 3, 4, torch.Generator().manual_seed(0))
    assert record["calibrated"] and abs(after - 1) < 0.05, record
    assert 0.5 <= record["scale"] < 0.9 and record["k_B"] == pytest.approx(float(model.k_B.detach()))
    assert record["iterations"][0]["ratio"] == pytest.approx(before)
    # never beyond a factor of two of the trained value
    set_positive_scalar(model.log_k_B, 3.0)
    record = calibrate_temperature(model, [window], lag=3, settle=4, iterations=6)
    assert record["scale"] == pytest.approx(0.5) and record["ratio"] > 1


@pytest.mark.parametrize("noise", [True, False])
def test_calibration_rollouts_take_the_fused_step_with_the_same_draws(window_dataset, noise):
    """create_graph=False (calibration) takes drift_and_noise; the differentiable path the reference:
    the same displacements to round-off for the same generator."""
    window = a_window(window_dataset)
    model = small_model(window_dataset)
    set_positive_scalar(model.log_k_B, 0.1)
    with torch.enable_grad():
        graph = rollout_displacements(model, window, torch.Generator().manual_seed(4), noise=noise).detach()
    plain = rollout_displacements(model, window, torch.Generator().manual_seed(4), noise=noise, create_graph=False)
    assert not plain.requires_grad and graph.abs().max() > 0
    assert torch.allclose(plain, graph, rtol=1e-9, atol=1e-12)
