"""Link features into trajectories with trackpy; predict driven motion; remove drift.

Linking works in pixels (trackpy's ``x, y`` of the located features); the
search range is configured in micrometres and converted here. Under shear a
particle far from the zero-velocity line moves further per frame than any
search range that is still unambiguous in a dense packing, so two predictors
are offered: trackpy's ``NearestVelocityPredict`` and ``AffineVelocityPredict``,
which fits a uniform velocity plus a full velocity-gradient tensor to the last
frame pair (exact for simple shear, pure strain, rotation and drift). Both are
bootstrapped on the first frame pair so the very first links already use a
prediction.

Drift subtraction removes only a rigid translation: the median (robust) or
mean (trackpy's ``compute_drift``) displacement of the particles between
consecutive frames, accumulated over time. A translation cannot change a
velocity gradient, so an imposed shear keeps its measured rate
(tests/test_tracking_link.py checks this).

After linking, trajectories may be filtered on their mass, size and
eccentricity (trackpy walkthrough's cut of out-of-focus particles), either on
each trajectory's mean or on each observation.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import trackpy
from scipy.spatial import cKDTree
from trackpy.linking.utils import SubnetOversizeException
from trackpy.predict import NearestVelocityPredict, NullPredict

from ._quiet import quiet_trackpy
from .params import AUTO, LinkParams, TrajectoryFilterParams

POS_COLUMNS = ["y", "x"]  # trackpy's order
BOOTSTRAP_ITERATIONS = 4


class LinkingError(ValueError):
    """Linking cannot proceed with these parameters; the message names the key to change."""


def auto_search_range_px(features: pd.DataFrame, max_frames: int = 10) -> dict:
    """Half the median nearest-neighbour distance between features of the same frame (px).

    A particle moving further than half the distance to its neighbour between
    frames cannot be linked unambiguously, whatever the algorithm. The
    first max_frames frames holding at least two features are used.
    """
    distances = []
    for _, frame in features.groupby("frame", sort=True):
        if len(frame) >= 2:
            points = frame[["x", "y"]].to_numpy()
            distances.append(cKDTree(points).query(points, k=2)[0][:, 1])
            if len(distances) == max_frames:
                break
    if not distances:
        raise LinkingError("link.search_range_um = 'auto' needs two features in one frame to measure their "
                           "spacing; set link.search_range_um to a number of micrometres")
    spacing = float(np.median(np.concatenate(distances)))
    return {"search_range_px": 0.5 * spacing, "median_nearest_neighbour_px": spacing,
            "method": "half_median_nearest_neighbour_distance"}


class AffineVelocityPredict(NullPredict):
    """Shear-aware predictor: velocity = v0 + G (r - r_mean), fitted to the latest frame pair.

    Six numbers describe any uniform velocity gradient plus translation, so
    the fit is well determined by a few dozen links and extrapolates to the
    edges of the field, where simple shear is fastest. Links whose residual
    exceeds five robust standard deviations are left out of the fit (one
    mislinked pair must not tilt the field). With fewer than
    ``min_links`` links the previous field is kept.

    Parameters
    ----------
    initial_field : (3, 2) array, optional
        Velocity coefficients [v0; dv/dy; dv/dx] (rows) for (vy, vx) (columns),
        about ``initial_centre``, in px per frame unit.
    initial_centre : (2,) array, optional
        (y, x) the initial field is expanded about.
    """

    def __init__(self, initial_field=None, initial_centre=None, pos_columns=None, min_links: int = 6):
        self.pos_columns = pos_columns
        self.min_links = min_links
        self.field = None if initial_field is None else np.asarray(initial_field, dtype=float)
        self.centre = np.zeros(2) if initial_centre is None else np.asarray(initial_centre, dtype=float)
        self.previous = None  # last observed frame, indexed by particle

    @staticmethod
    def fit(positions: np.ndarray, velocities: np.ndarray, min_links: int = 6):
        """Least-squares affine field (coefficients, centre) of velocities at positions, or None."""
        if len(positions) < min_links:
            return None
        centre = positions.mean(axis=0)
        design = np.column_stack([np.ones(len(positions)), positions - centre])
        keep = np.ones(len(positions), dtype=bool)
        for _ in range(2):
            coefficients, *_ = np.linalg.lstsq(design[keep], velocities[keep], rcond=None)
            residual = np.linalg.norm(velocities - design @ coefficients, axis=1)
            scale = 1.4826 * np.median(residual[keep]) + 1e-12
            new_keep = residual <= 5 * scale
            if new_keep.sum() < min_links or np.array_equal(new_keep, keep):
                break
            keep = new_keep
        return coefficients, centre

    def velocity(self, positions: np.ndarray) -> np.ndarray:
        if self.field is None:
            return np.zeros_like(positions)
        design = np.column_stack([np.ones(len(positions)), positions - self.centre])
        return design @ self.field

    def observe(self, frame):
        current = frame.set_index("particle")
        if self.previous is not None:
            common = current.index.intersection(self.previous.index)
            if len(common):
                now, before = current.loc[common], self.previous.loc[common]
                dt = now[self.t_column].to_numpy(float) - before[self.t_column].to_numpy(float)
                velocities = (now[self.pos_columns].to_numpy() - before[self.pos_columns].to_numpy()) / dt[:, None]
                result = self.fit(now[self.pos_columns].to_numpy(), velocities, self.min_links)
                if result is not None:
                    self.field, self.centre = result
        self.previous = current

    def predict(self, t1, particles):
        positions = np.array([p.pos for p in particles], dtype=float)
        times = np.array([p.t for p in particles], dtype=float)
        return positions + self.velocity(positions) * (t1 - times)[:, None]


def _first_pair(features: pd.DataFrame) -> pd.DataFrame:
    frames = np.sort(features["frame"].unique())
    return features[features["frame"].isin(frames[:2])]


def bootstrap_field(features: pd.DataFrame, search_range_px: float, **link_kwargs):
    """Affine velocity field of the first frame pair, by linking it repeatedly with its own prediction.

    The first pass links with no prediction, so only particles that moved
    less than the search range link correctly; the field fitted to them
    predicts the rest, and a few passes converge.
    Returns (coefficients, centre, linked pair) or (None, None, pair) without enough links.
    """
    pair = _first_pair(features)
    if pair["frame"].nunique() < 2:
        return None, None, pair
    field, centre = None, None
    linked = pair
    for _ in range(BOOTSTRAP_ITERATIONS):
        predictor = AffineVelocityPredict(field, centre, pos_columns=POS_COLUMNS)
        linked = _run_predictor(predictor, pair, search_range_px, **link_kwargs)
        wide = linked.pivot_table(index="particle", columns="frame", values=POS_COLUMNS)
        wide = wide.dropna()
        if len(wide) < predictor.min_links:
            return field, centre, linked
        f0, f1 = sorted(pair["frame"].unique())[:2]
        start = np.column_stack([wide[(c, f0)] for c in POS_COLUMNS])
        end = np.column_stack([wide[(c, f1)] for c in POS_COLUMNS])
        # Fitted at the start positions: the linker predicts from the earlier frame.
        result = AffineVelocityPredict.fit(start, (end - start) / (f1 - f0), predictor.min_links)
        if result is None:
            break
        new_field, new_centre = result
        converged = field is not None and np.allclose(new_field, field, atol=1e-3)
        field, centre = new_field, new_centre
        if converged:
            break
    return field, centre, linked


def _run_predictor(predictor, features, search_range_px, **link_kwargs):
    with warnings.catch_warnings(), quiet_trackpy():
        warnings.simplefilter("ignore")  # predictors warn when a frame pair shares no particle
        return predictor.link_df(features, search_range_px, pos_columns=POS_COLUMNS, t_column="frame",
                                 **link_kwargs)


def link_features(features: pd.DataFrame, params: LinkParams, pixel_size_um: float,
                  search_range_px: float | None = None) -> tuple[pd.DataFrame, dict]:
    """Link located features (px columns x, y and frame) into trajectories.

    Returns the features with a ``particle`` column and a record of what was
    used (search range in px, the auto choice, the bootstrapped field).
    """
    record: dict = {}
    if search_range_px is None and params.search_range_px is not None:
        search_range_px = params.search_range_px
    if search_range_px is None:
        if params.search_range_um == AUTO:
            record["search_range"] = auto_search_range_px(features)
            search_range_px = record["search_range"]["search_range_px"]
        else:
            search_range_px = params.search_range_um / pixel_size_um
    record["search_range_px"] = float(search_range_px)
    kwargs = {"memory": params.memory, "adaptive_step": params.adaptive_step}
    if params.adaptive_stop_um is not None:
        kwargs["adaptive_stop"] = params.adaptive_stop_um / pixel_size_um
    try:
        if params.predictor == "none" or features["frame"].nunique() < 2:
            with warnings.catch_warnings(), quiet_trackpy():
                warnings.simplefilter("ignore")
                linked = trackpy.link(features, search_range_px, pos_columns=POS_COLUMNS, t_column="frame",
                                      **kwargs)
        else:
            field, centre, first_pair = bootstrap_field(features, search_range_px, **kwargs)
            record["bootstrap_velocity_field_px_per_frame"] = None if field is None else {
                "centre_yx": np.round(centre, 4).tolist(), "coefficients": np.round(field, 6).tolist()}
            if params.predictor == "affine":
                predictor = AffineVelocityPredict(field, centre, pos_columns=POS_COLUMNS)
            else:
                guess = _first_pair_velocities(first_pair)
                predictor = (NearestVelocityPredict(guess[0], guess[1], pos_columns=POS_COLUMNS)
                             if guess is not None else NearestVelocityPredict(pos_columns=POS_COLUMNS))
            linked = _run_predictor(predictor, features, search_range_px, **kwargs)
    except SubnetOversizeException as error:
        raise LinkingError(
            f"linking failed: too many candidate links in a crowded region ({error}); lower "
            f"link.search_range_um (now {search_range_px * pixel_size_um:.3g} µm) or set link.adaptive_stop_um"
        ) from None
    linked = linked.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)
    linked["particle"] = linked["particle"].astype(np.int64)
    return linked, record


def _first_pair_velocities(pair: pd.DataFrame):
    """Positions and velocities (px/frame) of the particles linked in the first frame pair."""
    frames = sorted(pair["frame"].unique())
    if len(frames) < 2 or "particle" not in pair:
        return None
    wide = pair.pivot_table(index="particle", columns="frame", values=POS_COLUMNS).dropna()
    if len(wide) == 0:
        return None
    start = np.column_stack([wide[(c, frames[0])] for c in POS_COLUMNS])
    end = np.column_stack([wide[(c, frames[1])] for c in POS_COLUMNS])
    return start, (end - start) / (frames[1] - frames[0])


def filter_stubs(trajectories: pd.DataFrame, min_length: int) -> pd.DataFrame:
    """Keep trajectories observed in at least min_length frames (trackpy.filter_stubs)."""
    if len(trajectories) == 0 or min_length <= 1:
        return trajectories.reset_index(drop=True)
    counts = trajectories.groupby("particle")["frame"].transform("size")
    return trajectories.loc[counts >= min_length].reset_index(drop=True)


def compute_drift(trajectories: pd.DataFrame, frame_numbers, pos_columns=("x", "y"), method: str = "median",
                  smoothing: int = 0) -> pd.DataFrame:
    """Cumulative rigid drift per frame from the displacements between consecutive analysed frames.

    ``method``: "median" of the displacements (robust to the few particles
    that move on their own), or "mean" computed by ``trackpy.compute_drift``
    itself (trackpy's walkthrough; ``smoothing``: its trailing rolling mean
    over that many frame steps). Only displacements between consecutive
    analysed frames count (a gap bridged by linking memory would mix two
    intervals). A frame pair without any common particle adds no drift.
    Returns a DataFrame indexed by frame with one column per position
    column, zero at the first frame.
    """
    frame_numbers = np.asarray(frame_numbers)
    if method == "mean":
        return _trackpy_mean_drift(trajectories, frame_numbers, list(pos_columns), smoothing)
    increments = np.zeros((len(frame_numbers), len(pos_columns)))
    if len(trajectories):
        t = trajectories.sort_values(["particle", "frame"])
        position = np.searchsorted(frame_numbers, t["frame"].to_numpy())
        same = (t["particle"].to_numpy()[1:] == t["particle"].to_numpy()[:-1]) & (np.diff(position) == 1)
        steps = np.diff(t[list(pos_columns)].to_numpy(), axis=0)[same]
        target = position[1:][same]
        if len(target):
            medians = pd.DataFrame(steps).groupby(target).median()
            increments[medians.index.to_numpy()] = medians.to_numpy()
    drift = pd.DataFrame(np.cumsum(increments, axis=0), columns=list(pos_columns),
                         index=pd.Index(frame_numbers, name="frame"))
    return drift


def _trackpy_mean_drift(trajectories: pd.DataFrame, frame_numbers: np.ndarray, pos_columns: list[str],
                        smoothing: int) -> pd.DataFrame:
    """trackpy.compute_drift on the analysed frames, counted 0, 1, 2, ...

    trackpy takes steps between frames whose numbers differ by one; counting
    the analysed frames makes a frame_range step of 2 work too (trackpy alone
    would find no step at all). Frames without a step get the drift of the
    frame before (trackpy's subtract_drift would subtract nothing there).
    """
    drift = pd.DataFrame(0.0, index=pd.Index(frame_numbers, name="frame"), columns=pos_columns)
    if len(trajectories) == 0:
        return drift
    table = trajectories[["particle", *pos_columns]].assign(
        frame=np.searchsorted(frame_numbers, trajectories["frame"].to_numpy()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        steps = trackpy.compute_drift(table, smoothing, pos_columns=pos_columns)
    cumulative = steps.reindex(np.arange(len(frame_numbers)))[pos_columns].ffill().fillna(0.0)
    drift[:] = cumulative.to_numpy()
    return drift


def filter_trajectories(trajectories: pd.DataFrame, params: TrajectoryFilterParams) -> pd.DataFrame:
    """Keep trajectories (or observations) strictly inside the mass, size and eccentricity limits.

    ``per = "trajectory"`` judges each trajectory by its mean and keeps or
    drops it whole; ``"observation"`` judges every row, as trackpy's
    walkthrough does (``t1[(t1.mass > 50) & (t1['size'] < 2.6) & (t1.ecc <
    0.3)]``), which may leave gaps in a trajectory. Limits are strict, as
    the walkthrough's. No limit: the table unchanged.
    """
    limits = [(column, low, high) for column, low, high in (
        ("mass", params.min_mass, params.max_mass), ("size", params.min_size, params.max_size),
        ("ecc", params.min_ecc, params.max_ecc)) if low is not None or high is not None]
    if not limits or len(trajectories) == 0:
        return trajectories.reset_index(drop=True)
    columns = [column for column, _, _ in limits]
    values = (trajectories.groupby("particle")[columns].transform("mean") if params.per == "trajectory"
              else trajectories[columns])
    keep = np.ones(len(trajectories), dtype=bool)
    for column, low, high in limits:
        if low is not None:
            keep &= values[column].to_numpy() > low
        if high is not None:
            keep &= values[column].to_numpy() < high
    return trajectories.loc[keep].reset_index(drop=True)


def subtract_drift(trajectories: pd.DataFrame, drift: pd.DataFrame) -> pd.DataFrame:
    """Subtract the drift of each frame from the positions (a rigid translation per frame)."""
    out = trajectories.copy()
    shift = drift.reindex(out["frame"].to_numpy())
    for column in drift.columns:
        out[column] = out[column].to_numpy() - shift[column].to_numpy()
    return out
