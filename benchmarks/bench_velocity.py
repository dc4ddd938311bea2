"""Velocity error against the truth for each velocity scheme: the noise and bias trade-off of smoothing.

The default digital twin (600 particles, 2 shear cycles = 81 frames at 20
frames/s, rendered with the default bright-field microscope) is tracked once;
the same trajectories are then differentiated with first (backward)
differences, central differences (``velocity.smoothing: none``, the default)
and Savitzky-Golay derivatives of order 2 over 5, 7 and 9 frames. Over the
rows matched to the truth at least a mask diameter inside the image, the
error against the truth's velocity (central differences of the true
positions, docs/data_schema.md) is split, since every scheme is linear, into

* noise: the scheme applied to the position errors (found - true), beside the
  noise floor tracking.noise predicts from sigma (``||c|| sigma / dt``);
* bias: the scheme applied to the true positions, minus the truth's velocity
  (what the scheme changes in the motion itself: smoothing averages the
  Brownian steps away, a first difference lags half a frame).

A second, synthetic case shows the bias on curved motion: particles on
circles of 5 px radius, 20 frames per period (fast) to 80 (slow), seen with
white noise of 0.02 px, against the analytic velocity.

    python benchmarks/bench_velocity.py [--out benchmarks/results/velocity.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import pandas as pd

from mpd.atomic import atomic_write_json
from tracking import track_video
from tracking.accuracy import match_frames
from tracking.motion import add_velocities, run_ids
from tracking.noise import row_factors, stencil_factors
from tracking.params import VelocityParams

SCHEMES = {
    "first_difference": None,
    "central_difference": VelocityParams(),
    "savgol_5": VelocityParams(smoothing="savgol", window=5, polyorder=2),
    "savgol_7": VelocityParams(smoothing="savgol", window=7, polyorder=2),
    "savgol_9": VelocityParams(smoothing="savgol", window=9, polyorder=2),
}


def first_differences(table: pd.DataFrame, fps: float, columns=("x", "y")) -> np.ndarray:
    """Backward differences inside each unbroken run (forward at its first row); rows sorted by particle, frame."""
    run = run_ids(table)
    values = table[list(columns)].to_numpy(float)
    out = np.full(values.shape, np.nan)
    back = np.r_[False, run[1:] == run[:-1]]
    out[back] = (values[back] - values[np.flatnonzero(back) - 1]) * fps
    ahead = ~back & np.r_[run[:-1] == run[1:], False]
    out[ahead] = (values[np.flatnonzero(ahead) + 1] - values[ahead]) * fps
    return out


def differentiate(table: pd.DataFrame, scheme: str, fps: float, columns=("x", "y")) -> np.ndarray:
    table = table.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)
    if SCHEMES[scheme] is None:
        return first_differences(table, fps, columns)
    out = add_velocities(table, fps, SCHEMES[scheme], pos_columns=columns, velocity_columns=("vx_", "vy_"))
    return out[["vx_", "vy_"]].to_numpy()


def factors(table: pd.DataFrame, scheme: str) -> np.ndarray:
    table = table.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)
    if SCHEMES[scheme] is None:
        run = run_ids(table)
        alone = np.bincount(run)[run] == 1
        return np.where(alone, np.nan, np.sqrt(2.0))
    return row_factors(table, SCHEMES[scheme])


def rms(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in np.sqrt(np.mean(values**2, axis=0))]


def twin_case(work: Path) -> dict:
    from twin.params import MicroscopeParams, SimulationParams
    from twin.render import render_video
    from twin.simulate import simulate

    simulation = SimulationParams()
    simulate(simulation, work / "truth")
    truth_table = pd.read_parquet(work / "truth" / "trajectories.parquet")
    meta = json.loads((work / "truth" / "metadata.json").read_text())
    render_video(truth_table, meta, MicroscopeParams(), work / "video")
    video = json.loads((work / "video" / "metadata.json").read_text())
    fps, mpp = video["frame_rate_hz"], video["pixel_size_um"]
    truth = pd.read_parquet(work / "video" / "truth_pixels.parquet")
    result = track_video(video["frames_path"], work / "tracking", {"locate": {"invert": True}}, pixel_size_um=mpp,
                         frame_rate_hz=fps, processes=1, truth_pixels=truth)
    found = result.trajectories
    diameter = result.qc["resolved"]["locate"]["diameter"]
    matches = match_frames(found, truth, 0.5 * float(truth["diameter"].min()) / mpp)
    f = found.iloc[matches["found_row"].to_numpy()].reset_index(drop=True)
    t = truth.iloc[matches["truth_row"].to_numpy()].reset_index(drop=True)
    width, height = result.qc["frame_shape_px"][1], result.qc["frame_shape_px"][0]
    inside = ((f["x_px"] >= diameter) & (f["x_px"] <= width - 1 - diameter) & (f["y_px"] >= diameter)
              & (f["y_px"] <= height - 1 - diameter)).to_numpy()
    # One run per (found, true) pair and only rows inside the margin: a stencil never mixes two true particles.
    pair = pd.factorize(pd.MultiIndex.from_arrays([f["particle"].to_numpy(), t["particle"].to_numpy()]))[0]
    table = pd.DataFrame({"particle": pair, "frame": f["frame"].to_numpy(), "x": f["x_px"], "y": f["y_px"],
                          "tx": t["x_px"], "ty": t["y_px"], "ex": f["x_px"] - t["x_px"], "ey": f["y_px"] - t["y_px"],
                          "vx_true": t["vx_px"], "vy_true": t["vy_px"]})[inside]
    table = table.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)
    change = np.diff(table[["ex", "ey"]].to_numpy(), axis=0)[run_ids(table)[1:] == run_ids(table)[:-1]]
    sigma = np.sqrt(np.mean(change**2, axis=0) / 2)
    true_v = table[["vx_true", "vy_true"]].to_numpy()
    schemes = {}
    for scheme, params in SCHEMES.items():
        start = time.process_time()
        estimate = differentiate(table, scheme, fps)
        cpu = time.process_time() - start
        noise = differentiate(table, scheme, fps, ("ex", "ey"))
        bias = differentiate(table, scheme, fps, ("tx", "ty")) - true_v
        k = factors(table, scheme)
        ok = np.all(np.isfinite(estimate), axis=1)
        error = (estimate - true_v)[ok]
        schemes[scheme] = {
            "velocity_rms_error_um_s": rms(error * mpp),
            "velocity_rms_error_magnitude_um_s": round(float(np.sqrt(np.mean(np.sum((error * mpp) ** 2, axis=1)))), 4),
            "noise_rms_um_s": rms(noise[ok] * mpp),
            "noise_floor_predicted_um_s": [round(float(v), 4) for v in sigma * mpp * np.sqrt(np.nanmean(k[ok] ** 2))
                                           * fps],
            "bias_rms_um_s": rms(bias[ok] * mpp),
            "stencil_factor_interior": (round(stencil_factors(params)["interior"], 4)
                                        if params else round(float(np.sqrt(2)), 4)),
            "rows": int(ok.sum()),
            "cpu_s": round(cpu, 4),
        }
    return {
        "work": {"frames": int(found["frame"].nunique()), "particles_simulated": simulation.n_particles,
                 "trajectories": int(found["particle"].nunique()), "rows_compared": len(table),
                 "frame_rate_hz": fps, "pixel_size_um": mpp, "mask_diameter_px": diameter},
        "sigma_truth_px": [round(float(v), 4) for v in sigma],
        "sigma_from_data_px": result.qc["velocity_noise"]["sigma_from_data"].get("sigma_px"),
        "lag2_step_correlation": result.qc["velocity_noise"]["sigma_from_data"].get("lag2_correlation"),
        "truth_rms_speed_um_s": round(float(np.sqrt(np.mean(np.sum((true_v * mpp) ** 2, axis=1)))), 4),
        "schemes": schemes,
    }


def circle_case(seed: int = 0, n_particles: int = 400, n_frames: int = 60, radius_px: float = 5.0,
                sigma_px: float = 0.02) -> dict:
    rng = np.random.default_rng(seed)
    out = {"work": {"particles": n_particles, "frames": n_frames, "radius_px": radius_px, "sigma_px": sigma_px},
           "periods": {}}
    for period in (20, 40, 80):
        omega = 2 * np.pi / period  # per frame
        phase = rng.uniform(0, 2 * np.pi, n_particles)
        t = np.arange(n_frames)[:, None]
        x = radius_px * np.cos(omega * t + phase)
        y = radius_px * np.sin(omega * t + phase)
        table = pd.DataFrame({"particle": np.tile(np.arange(n_particles), n_frames),
                              "frame": np.repeat(np.arange(n_frames), n_particles),
                              "x": (x + rng.normal(0, sigma_px, x.shape)).ravel(),
                              "y": (y + rng.normal(0, sigma_px, y.shape)).ravel(),
                              "tx": x.ravel(), "ty": y.ravel()})
        vx = (-radius_px * omega * np.sin(omega * t + phase)).ravel(order="F")  # sorted by particle, then frame
        vy = (radius_px * omega * np.cos(omega * t + phase)).ravel(order="F")
        true_v = np.column_stack([vx, vy])
        rows = {}
        for scheme in SCHEMES:
            estimate = differentiate(table, scheme, 1.0)
            bias = differentiate(table, scheme, 1.0, ("tx", "ty")) - true_v
            rows[scheme] = {"velocity_rms_error_px_per_frame": round(float(np.sqrt(np.mean((estimate - true_v) ** 2))), 5),
                            "bias_rms_px_per_frame": round(float(np.sqrt(np.mean(bias**2))), 5),
                            "noise_floor_px_per_frame": round(float(sigma_px * np.sqrt(np.nanmean(factors(table, scheme) ** 2))), 5)}
        out["periods"][f"{period}_frames"] = {"speed_px_per_frame": round(radius_px * omega, 4), "schemes": rows}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "velocity.json"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-velocity-") as work:
        twin = twin_case(Path(work))
    best_twin = min(twin["schemes"], key=lambda s: twin["schemes"][s]["velocity_rms_error_magnitude_um_s"])
    report = {
        "twin": twin,
        "twin_lowest_error_scheme": best_twin,
        "circles": circle_case(),
        "seconds": round(time.perf_counter() - start, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "threads": 1,
                    "load_average": list(os.getloadavg())},
        "scheme_parameters": {k: (dataclasses.asdict(v) if v else "backward differences") for k, v in SCHEMES.items()},
    }
    atomic_write_json(report, args.out)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
