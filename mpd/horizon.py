"""The time split of a model comparison on a simulated bulk sample (the paper's Table 1 protocol).

One home for the frames every stage agrees on (the dataset, the learned
model's rollout, the baselines and the analysis):

* training block: frames ``[0, train_frames)``: the only frames any model
  (learned, calibrated or trained) ever sees;
* rollout start: frame ``start = train_frames + history``; the first frames
  after the block are held back too, so that a model needing a history (GNS:
  ``history`` past frames) takes it from held-back frames, not from the block;
* rollout: ``rollout_frames = rollout_factor * train_frames`` steps of one
  sampling interval after ``start`` (the paper: 25 times the training
  horizon), compared with the held-back truth over frames
  ``[start, start + rollout_frames]``.
"""
from __future__ import annotations

from dataclasses import dataclass

HISTORY_FRAMES = 5  # GNS's default velocity history (mpd.baselines.gns.GNSParams.history)


class HorizonError(ValueError):
    """The truth is too short for the requested split; the message names the keys to change."""


@dataclass(frozen=True)
class Horizon:
    train_frames: int
    start: int
    rollout_frames: int

    @property
    def end(self) -> int:
        """Last frame of the rollout (inclusive)."""
        return self.start + self.rollout_frames

    @property
    def frames_needed(self) -> int:
        return self.end + 1

    def to_dict(self) -> dict:
        return {"train_frames": self.train_frames, "start_frame": self.start, "rollout_frames": self.rollout_frames,
                "end_frame": self.end}


def horizon(n_truth_frames: int, train_frames: int, rollout_factor: float, history: int = HISTORY_FRAMES,
            *, where: str = "comparison") -> Horizon:
    """The split for a truth of ``n_truth_frames`` frames; `HorizonError` naming the keys if it does not fit."""
    if int(train_frames) < 3:
        raise HorizonError(f"{where}.train_frames = {train_frames}: need at least 3 frames to train on")
    if not rollout_factor > 0:
        raise HorizonError(f"{where}.rollout_factor = {rollout_factor}: must be > 0")
    split = Horizon(int(train_frames), int(train_frames) + int(history),
                    max(1, round(rollout_factor * int(train_frames))))
    if split.frames_needed > n_truth_frames:
        raise HorizonError(
            f"the truth has {n_truth_frames} frames but {where}.train_frames = {train_frames} and "
            f"{where}.rollout_factor = {rollout_factor} need {split.frames_needed} "
            f"({train_frames} to train on, {history} held back as history, {split.rollout_frames} to roll out "
            f"and the start frame); simulate more frames or lower one of them")
    return split


#: Defaults of an experiment's `comparison:` section (workflow/schemas/config.schema.yaml documents each key).
COMPARISON_DEFAULTS = {
    "models": ["learned", "dpd"],
    "case": None,            # the paper's column; default: the star-polymer preset's name
    "train_frames": 40,
    "rollout_factor": 25,
    "rdf_r_max": None,       # default 0.45 of the shortest box side
    "rdf_bins": 60,
    "seed": 0,
    "dpd": {},
    "gns": {},
    "gns_sde": {},
}


def comparison_settings(section, preset: str | None = None) -> dict:
    """An experiment's `comparison:` section over ``COMPARISON_DEFAULTS`` (``case`` defaults to ``preset``)."""
    settings = {**COMPARISON_DEFAULTS, **dict(section or {})}
    if settings["case"] is None:
        settings["case"] = preset
    return settings
