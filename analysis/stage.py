"""The analysis stage of the workflow: one experiment's tracked data, optionally its truth and a model rollout.

`analyse_experiment` is what the Snakemake rule calls. The tracked experiment
is the reference; the truth (digital twins only) and the rollout (once the
model exists) are candidates. For a twin the errors are also computed against
the truth, so tracking error and model error can be told apart.

Fidelity (docs/fidelity.md): with a rollout, the statistics are measured
inside the interior of the field of view (the window less the geometry
stage's exterior band: the region the model predicts), a null model (affine
flow plus independent Brownian steps, `analysis.baselines`) is measured the
same way, and `metrics.json` gets a ``fidelity`` section: every target, met
or missed, against the truth (twins) or the experiment. A twin's rollout in
its periodic, sheared box (`mpd.stage.rollout_box`) is compared with the
truth in the box, with its own null model, in ``box/`` (metrics, tables,
figures) and in ``fidelity.periodic_box``.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.baselines import box_flows, brownian_null, measured_diffusion, observed_flows
from analysis.compare import common_frames, errors, map_frame_of, metrics_document, write_into
from analysis.fidelity import fidelity_report
from analysis.inputs import (
    AnalysisInputError,
    check_trajectories,
    read_json,
    read_table,
    truth_box_table,
    truth_in_window,
    window_of_video,
)
from analysis.measure import Settings, measure, resolve_settings
from mpd.atomic import atomic_output_dir

__all__ = ["analyse_experiment"]



log = logging.getLogger(__name__)

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
    rollout_status=None,
    rollout_box=None,
    rollout_box_status=None,
    dataset_metadata=None,
    null_seed: int = 0,
    movie_fps: float = 10.0,
    training_log=None,
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
    rollout_status, rollout_box_status : the rollouts' status JSON (path or dict): a rollout that
        did not complete meets no fidelity target.
    rollout_box : a twin's periodic-box rollout (`mpd.stage.rollout_box`), compared with the truth in
        its box (needs truth, truth_metadata and strain).
    dataset_metadata : the geometry stage's dataset metadata.json (path or dict): the exterior width
        (the default edge margin with a rollout) and the training block, whose data give the null
        model's diffusion coefficients.
    null_seed : seed of the null model's Brownian steps.
    movie_fps : frames per second of figures/movie.mp4 (experiment | rollout, coloured by D2min).
    training_log : the model's training_log.csv (path or DataFrame): figures/training.png.

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
            boxes["truth"] = truth_box_table(truth_metadata, strain_df)
    statuses = {"window": _status(rollout_status, rollout), "periodic_box": _status(rollout_box_status, rollout_box)}
    statuses = {k: v for k, v in statuses.items() if v is not None}
    if rollout is not None:
        data["rollout"] = read_table(rollout, "rollout trajectories")
        if data["rollout"]["frame"].nunique() < 2:
            # nothing to compare: say so once, and analyse the rest (the outputs replace any earlier ones)
            statuses["window"]["analysed"] = False
            log.warning("the rollout %s has %d frame(s) (%s): it is not analysed", rollout,
                        data["rollout"]["frame"].nunique(), statuses["window"].get("message", "no status"))
            del data["rollout"]
            rollout = None

    dataset_meta = read_json(dataset_metadata) if dataset_metadata is not None else None
    if rollout is not None and settings.edge_margin_um is None and dataset_meta is not None:
        # the region the model predicts: the window less the exterior band
        width = (dataset_meta.get("geometry") or {}).get("exterior_width_um")
        if width:
            settings = dataclasses.replace(settings, edge_margin_um=float(width))
    train_frames = _training_frames(dataset_meta, experiment)
    if rollout is not None:
        rolled = data["rollout"]
        frames = np.unique(rolled["frame"].to_numpy())
        source = experiment[experiment["frame"].isin(frames)]
        train = experiment[experiment["frame"].isin(train_frames)]
        diffusion = measured_diffusion(train, observed_flows(train))
        data["null"] = brownian_null(source, frames, observed_flows(source), diffusion, seed=null_seed)

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
    fidelity = {}
    rollout_errors = {}
    if rollout is not None:
        # The model is judged over the rollout's frames only: each reference is measured again there.
        frames = np.unique(data["rollout"]["frame"].to_numpy())
        now = {name: measure(data[name][data[name]["frame"].isin(frames)], settings, name=name, window=window,
                             strain=strain_df) for name in references if name not in boxes}
        for name, m in now.items():
            rollout_errors[name] = {c: errors(m, measurements[c]) for c in ("rollout", "null")}
        reference_name = "truth" if "truth" in now else "experiment"
        ref_now = now[reference_name]
        fidelity["window"] = {
            "reference": reference_name, "frames": [int(frames[0]), int(frames[-1])],
            "region": "field of view less the exterior band" if dataset_meta else "field of view",
            **fidelity_report(ref_now, {"rollout": measurements["rollout"], "null": measurements["null"]},
                              completed={"rollout": statuses["window"]["status"] == "completed"}),
        }
    box = None
    box_rolled = read_table(rollout_box, "periodic-box rollout") if rollout_box is not None else None
    if box_rolled is not None and box_rolled["frame"].nunique() < 2:
        statuses["periodic_box"]["analysed"] = False
        log.warning("the periodic-box rollout %s has fewer than two frames (%s): it is not analysed", rollout_box,
                    statuses["periodic_box"].get("message", "no status"))
        box_rolled = None
    if box_rolled is not None:
        if truth is None or truth_metadata is None or strain_df is None:
            raise AnalysisInputError("a periodic-box rollout is compared with the truth: give truth, "
                                     "truth_metadata and strain")
        box = _box_comparison(read_table(truth, "truth trajectories"), read_json(truth_metadata), strain_df,
                              box_rolled, settings, train_frames, null_seed)
        fidelity["periodic_box"] = {
            "reference": "truth", "frames": box["doc"]["frames"], "region": "periodic box",
            **fidelity_report(box["measurements"]["truth"],
                              {"rollout": box["measurements"]["rollout"], "null": box["measurements"]["null"]},
                              completed={"rollout": statuses["periodic_box"]["status"] == "completed"})}
    if fidelity:
        extra["fidelity"] = fidelity
    if statuses:
        extra["rollout_status"] = statuses
    note = rollout_note(statuses, fidelity)
    doc = metrics_document(measurements, settings, references, window=window, extra=extra)
    for name, by_candidate in rollout_errors.items():  # over the rollout's frames, not the whole recording
        doc["errors"][name].update(by_candidate)
    if rollout is not None:
        doc["rollout_frames"] = [int(frames[0]), int(frames[-1])]
    from analysis.figures import figure_note

    with atomic_output_dir(Path(out_dir)) as tmp, figure_note(note):  # everything appears at once, or nothing
        write_into(tmp, doc, measurements, reference="experiment",
                   map_frame=map_frame_of(measurements["experiment"], common_frames(measurements)),
                   window=window, figures=figures)
        if box is not None:
            write_into(tmp / "box", box["doc"], box["measurements"], reference="truth", map_frame=box["map_frame"],
                       window=None, figures=figures)
        if figures and rollout is not None:
            from analysis.movie import side_by_side_movie

            frames = np.unique(data["rollout"]["frame"].to_numpy())
            shown = experiment[experiment["frame"].isin(frames)]
            side_by_side_movie(shown, data["rollout"], measurements["experiment"].d2min,
                               measurements["rollout"].d2min, tmp / "figures" / "movie.mp4",
                               a=settings.length_scale_um, threshold_fraction=settings.threshold_fraction,
                               window=tuple(window), fps=movie_fps)
        if figures and training_log is not None:
            from analysis.figures import training_figure

            training_figure(read_table(training_log, "training log"), tmp / "figures" / "training.png")
        if figures and fidelity:
            from analysis.figures import fidelity_figure

            for name, report in fidelity.items():
                fidelity_figure(report, tmp / "figures" / f"fidelity_{name}.png",
                                title=f"{name.replace('_', ' ')}: errors against {report['reference']} "
                                      "(hatched: target missed)")
    return doc


def _status(status, rollout) -> dict | None:
    """The rollout's status document (a copy), {"status": "completed"} for a rollout given without one, or None."""
    if status is not None:
        return {**read_json(status), "analysed": True}
    return {"status": "completed", "message": "no status file given", "analysed": True} if rollout is not None \
        else None


def rollout_note(statuses: dict, fidelity: dict) -> str | None:
    """One line per rollout for the figures: its status and frames, and its fidelity verdict."""
    lines = []
    for domain, status in statuses.items():
        where = domain.replace("_", " ")
        if status.get("status") == "completed":
            text = f"{where} rollout: completed"
        else:
            text = f"{where} rollout: DIVERGED ({status.get('message', status.get('status'))})"
        if not status.get("analysed", True):
            text += "; fewer than two frames: not analysed"
        report = fidelity.get(domain)
        if report:
            missed = report["missed"]["rollout"]
            n_rows = len(report["rows"])
            text += (f"; fidelity against {report['reference']}: {n_rows - len(missed)} of {n_rows} targets met"
                     + (f", missed: {', '.join(missed)}" if missed else ""))
        lines.append(text)
    return "\n".join(lines) if lines else None


def _training_frames(dataset_meta: dict | None, experiment: pd.DataFrame) -> np.ndarray:
    """The frames of the dataset's training block (all frames without dataset metadata)."""
    frames = np.unique(experiment["frame"].to_numpy())
    split = ((dataset_meta or {}).get("splits") or {}).get("train") or {}
    if split.get("first_frame") is None:
        return frames
    return frames[(frames >= split["first_frame"]) & (frames <= split["last_frame"])]


def _box_comparison(truth, truth_meta, strain, rolled, settings, train_frames, seed) -> dict:
    """The periodic-box rollout, its null model and the truth over the same frames, measured in the box.

    Returns {"doc": its metrics document, "measurements", "map_frame"}.
    """
    frames = np.unique(rolled["frame"].to_numpy())
    box = truth_box_table(truth_meta, strain)
    dt = float(np.median(np.diff(np.unique(truth["t"].to_numpy()))))
    flows = box_flows(box, dt)
    train = truth[truth["frame"].isin(train_frames)]
    diffusion = measured_diffusion(train, flows, box=box)
    truth_now = truth[truth["frame"].isin(frames)]
    null = brownian_null(truth_now, frames, flows, diffusion, box=box, seed=seed)
    box_settings = dataclasses.replace(settings, edge_margin_um=0.0, r_max_um=None, max_lag_frames=None,
                                       length_scale_um=None, frame_step=settings.box_frame_step or settings.frame_step)
    strain_now = strain[strain["frame"].isin(frames)]
    box_settings = resolve_settings(box_settings, truth_now, box=box, strain=strain_now)
    data = {"truth": truth_now, "rollout": rolled, "null": null}
    ms = {name: measure(t, box_settings, name=name, box=box, strain=strain_now) for name, t in data.items()}
    doc = metrics_document(ms, box_settings, ["truth"], extra={
        "domain": "periodic box", "frames": [int(frames[0]), int(frames[-1])],
        "null_diffusion_um2_s": {str(k): v for k, v in diffusion.items()}})
    return {"doc": doc, "measurements": ms, "map_frame": int(frames[len(frames) // 2])}
