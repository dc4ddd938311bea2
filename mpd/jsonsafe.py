"""JSON that every stage writes the same way: numpy values as plain numbers, NaN and inf as null.

Python's json writes NaN as a bare `NaN`, which is not JSON and which other
readers reject; a quantity that could not be measured is written as null.
"""
from __future__ import annotations

import math

import numpy as np


def json_ready(value):
    """``value`` with numpy scalars and arrays converted and non-finite floats replaced by None."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return value
