"""The analysis stage of the workflow: one experiment's tracked data, optionally its truth and a model rollout.

`analyse_experiment` is what the Snakemake rule calls. The tracked experiment
is the reference; the truth (digital twins only) and the rollout (once the
model exists) are candidates. For a twin the errors are also computed against
the truth, so tracking error and model error can be told apart.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.compare import map_frame_of, metrics_document, write_outputs
from analysis.inputs import (
    AnalysisInputError,
    check_trajectories,
    read_json,
    read_table,
    truth_in_window,
    window_of_video,
)
from analysis.measure import Settings, measure, resolve_settings

__all__ = ["analyse_experiment"]


def _truth_box_table(truth_metadata: dict, strain: pd.DataFrame) -> pd.DataFrame:
    """frame, lx, ly, xy of the sheared periodic cell (xy = gamma ly)."""
    lx, ly = float(truth_metadata["lx_um"]), float(truth_metadata["ly_um"])
    return pd.DataFrame({"frame": strain["frame"].astype(np.int64), "lx": lx, "ly": ly,
                         "xy": strain["strain"].to_numpy(np.float64) * ly})


def analyse_experiment(
    trajectories,
    video_metadata,
    out_dir,
    *,
    truth=None,
    truth_metadata=None,
    strain=None,
    rollout=None,
    settings: Settings | dict | None = None,
    figures: bool = True,
) -> dict:
    """Analyse one experiment and write ``out_dir`` (normally ``results/{exp}/analysis/``) atomically.

    Parameters
    ----------
    trajectories : tracked trajectories (parquet/csv path or DataFrame), camera
        coordinates in µm (docs/data_schema.md). The reference.
    video_metadata : the video's metadata.json (path or dict): pixel_size_um,
        width_px, height_px give the window; fov_origin_um (rendered videos)
        places the truth in it.
    out_dir : output folder; gets metrics.json, figures/*.png, tables/<dataset>/*.csv.
    truth : truth trajectories (synthetic experiments), path or DataFrame. Analysed
        in the field of view (camera coordinates) when the video metadata has
        fov_origin_um, else in its periodic, sheared box (needs truth_metadata and strain).
    truth_metadata : truth metadata.json (path or dict): lx_um, ly_um.
    strain : strain.csv (frame, t, strain[, strain_rate]) path or DataFrame; None
        for an experiment without a strain record (then the affine motion is
        fitted per frame pair and the cycle phase needs settings.period_s).
    rollout : model rollout trajectories (path or DataFrame), camera
        coordinates like the tracked data; None while there is no model.
    settings : `analysis.measure.Settings` or a dict of its fields (config section).
    figures : draw figures/*.png (False: metrics.json and tables only).

    Returns the metrics dict written to metrics.json (docs/analysis.md).
    """
    settings = settings if isinstance(settings, Settings) else Settings.from_dict(settings)
    video = read_json(video_metadata)
    window = window_of_video(video)
    experiment = check_trajectories(read_table(trajectories, "tracked trajectories"), "experiment")
    strain_df = None if strain is None else read_table(strain, "strain").sort_values("frame").reset_index(drop=True)
    if strain_df is not None and not {"frame", "t", "strain"} <= set(strain_df.columns):
        raise AnalysisInputError("strain table needs columns frame, t, strain")

    data: dict[str, pd.DataFrame] = {"experiment": experiment}
    boxes: dict[str, object] = {}
    if truth is not None:
        truth_df = read_table(truth, "truth trajectories")
        if "fov_origin_um" in video:
            data["truth"] = truth_in_window(truth_df, read_json(truth_metadata), video)
        else:
            if truth_metadata is None or strain_df is None:
                raise AnalysisInputError("truth outside a rendered field of view needs truth_metadata and strain")
            data["truth"] = truth_df
            boxes["truth"] = _truth_box_table(read_json(truth_metadata), strain_df)
    if rollout is not None:
        data["rollout"] = read_table(rollout, "rollout trajectories")

    settings = resolve_settings(settings, experiment, window=window, strain=strain_df)
    measurements = {
        name: measure(traj, settings, name=name, window=None if name in boxes else window, box=boxes.get(name),
                      strain=strain_df)
        for name, traj in data.items()
    }
    references = ["experiment"] + (["truth"] if "truth" in measurements else [])
    extra = {
        "inputs": {
            "trajectories": str(trajectories) if not isinstance(trajectories, pd.DataFrame) else "DataFrame",
            "truth": None if truth is None else ("DataFrame" if isinstance(truth, pd.DataFrame) else str(truth)),
            "rollout": None if rollout is None else ("DataFrame" if isinstance(rollout, pd.DataFrame) else str(rollout)),
            "strain": None if strain is None else ("DataFrame" if isinstance(strain, pd.DataFrame) else str(strain)),
            "truth_domain": None if truth is None else ("periodic box" if "truth" in boxes else "field of view"),
        },
    }
    doc = metrics_document(measurements, settings, references, window=window, extra=extra)
    write_outputs(Path(out_dir), doc, measurements, reference="experiment",
                  map_frame=map_frame_of(measurements["experiment"]), window=window, figures=figures)
    return doc
