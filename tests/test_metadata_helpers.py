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


def test_software_versions_name_what_is_installed_and_what_is_not():
    from mpd.provenance import software_versions

    versions = software_versions("numpy", "surely-not-installed-dist")
    assert versions["numpy"] == np.__version__ and versions["surely-not-installed-dist"] is None
    assert versions["python"] and "colloid-mpd" in versions
