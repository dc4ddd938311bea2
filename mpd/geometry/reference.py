"""Which frame is the reference configuration of each frame (for the strain and D2min).

Two rules, part of the data contract (docs/geometry.md):

* ``"lag"``: reference of frame f is f - lag_frames (a rolling reference;
  lag_frames >= 1). The first lag_frames frames have none.
* ``"cycle"``: reference of frame f is the first frame of its shear cycle,
  cycle_start_frame + k P with k = floor((f - cycle_start_frame) / P) and
  P = cycle_frames (the period in frames, period_s * frame_rate_hz; it need
  not be an integer: the start is rounded half up to a frame, which is
  never after f). Frames before cycle_start_frame have none.

A reference that is not among the recorded frames counts as missing (-1);
the strain of that frame is then NaN and flagged.
"""
from __future__ import annotations

import numpy as np

REFERENCE_RULES = ("lag", "cycle")


def reference_frames(
    frames,
    *,
    reference: str = "lag",
    lag_frames: int = 1,
    cycle_frames: float | None = None,
    cycle_start_frame: int = 0,
    available=None,
) -> np.ndarray:
    """Reference frame of each entry of `frames` (int64), -1 where there is none.

    `available`: frames that exist (default: `frames` itself); a reference
    outside it is -1.
    """
    frames = np.asarray(frames, dtype=np.int64)
    if reference == "lag":
        if int(lag_frames) != lag_frames or lag_frames < 1:
            raise ValueError(f"lag_frames must be an integer >= 1, got {lag_frames}")
        ref = frames - int(lag_frames)
    elif reference == "cycle":
        if cycle_frames is None or not np.isfinite(cycle_frames) or cycle_frames < 1:
            raise ValueError(
                f"reference='cycle' needs cycle_frames >= 1 (the shear period in frames), got {cycle_frames}"
            )
        # A small tolerance so that a period like 39.999999 does not put frame 40 into cycle 0.
        k = np.floor((frames - cycle_start_frame) / cycle_frames + 1e-9)
        ref = np.floor(cycle_start_frame + k * cycle_frames + 0.5).astype(np.int64)  # half up: never after f
        ref[frames < cycle_start_frame] = -1
    else:
        raise ValueError(f"reference must be one of {REFERENCE_RULES}, got {reference!r}")
    available = frames if available is None else np.asarray(available, dtype=np.int64)
    return np.where(np.isin(ref, available), ref, -1)
