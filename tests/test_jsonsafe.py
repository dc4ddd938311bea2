import json
import math

import numpy as np

from mpd.jsonsafe import json_ready


def test_numpy_and_non_finite_values_become_strict_json():
    data = {"n": np.int64(3), "x": np.float32(0.5), "flag": np.bool_(True), "nan": math.nan,
            "inf": np.inf, "arr": np.array([1.0, np.nan]), 7: (np.int32(1), 2.5)}
    text = json.dumps(json_ready(data), allow_nan=False)
    assert json.loads(text) == {"n": 3, "x": 0.5, "flag": True, "nan": None, "inf": None,
                                "arr": [1.0, None], "7": [1, 2.5]}
