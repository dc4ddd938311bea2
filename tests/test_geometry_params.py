"""The geometry stage's config section: defaults, automatic cut-off and reference, clear errors."""
import pytest

from mpd.geometry.params import GeometryParameterError, GeometryParams


def test_auto_cutoff_is_a_multiple_of_the_spacing():
    params = GeometryParams.from_config({})
    assert params.cutoff_um(5.0) == pytest.approx(7.5)
    assert GeometryParams.from_config({"h_um": 6.0}).cutoff_um(5.0) == 6.0


def test_reference_is_the_cycle_start_when_the_period_is_known():
    params = GeometryParams.from_config(None)
    assert params.compute_kwargs(spacing_um=4.0, cycle_frames=40.0)["reference"] == "cycle"
    assert params.compute_kwargs(spacing_um=4.0, cycle_frames=None)["reference"] == "lag"


def test_cycle_reference_without_period_names_the_fix():
    with pytest.raises(GeometryParameterError, match="shear_period_s"):
        GeometryParams.from_config({"reference": "cycle"}).compute_kwargs(spacing_um=4.0, cycle_frames=None)


def test_unknown_key_and_bad_split_are_named():
    with pytest.raises(GeometryParameterError, match="geometry.lag"):
        GeometryParams.from_config({"lag": 2})
    with pytest.raises(GeometryParameterError, match="split_fractions"):
        GeometryParams.from_config({"split_fractions": [0.7, 0.2, 0.2]})
