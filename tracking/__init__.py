"""Microscopy video to linked trajectories with velocities (trackpy-based).

Modules, one job each: ``io`` (reading and validating inputs), ``movie``
(movies through OpenCV when installed), ``flatten`` (illumination flattening),
``locate`` (feature finding and the automatic diameter/minmass), ``link``
(linking, predictors, drift), ``register`` (drift by frame registration),
``motion`` (velocities), ``noise`` (the velocity noise floor), ``accuracy``
(comparison with a truth), ``qc`` (figures and counts), ``params``
(parameters and defaults) and ``pipeline`` (``track_video``, which runs them
all). See docs/tracking.md.
"""
from .io import TrackingInputError
from .link import LinkingError
from .params import ParameterError, TrackingParams, from_config
from .pipeline import TrackingResult, track_video

__all__ = ["LinkingError", "ParameterError", "TrackingInputError", "TrackingParams", "TrackingResult",
           "from_config", "track_video"]
