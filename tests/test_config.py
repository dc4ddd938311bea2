"""The configuration is checked before anything runs, and each error names its key."""
import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mpd.config import SCHEMA_PATH, ConfigError, load_config, load_schema, validate_config, video_input_files
from twin import params as twin_params

REPO = Path(__file__).resolve().parents[1]
BULK_WATER = REPO.parent / "shared" / "data" / "bulk_water"


def default_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_default_config_is_valid():
    config = load_config(REPO / "config.yaml")
    assert any("synthetic" in e for e in config["experiments"].values())


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["experiments"]["twin_demo"]["synthetic"]["simulation"].update(packing_fraction=1.3),
         "experiments.twin_demo.synthetic.simulation.packing_fraction"),
        (lambda c: c["experiments"]["twin_demo"]["synthetic"]["simulation"].update(n_particle=10),
         "experiments.twin_demo.synthetic.simulation.n_particle"),
        (lambda c: c["experiments"]["twin_demo"]["synthetic"]["microscope"].update(bit_depth=10),
         "experiments.twin_demo.synthetic.microscope.bit_depth"),
        (lambda c: c["experiments"]["twin_demo"]["synthetic"]["microscope"].update(spot="phase"),
         "experiments.twin_demo.synthetic.microscope.spot"),
        (lambda c: c["experiments"]["twin_demo"]["synthetic"]["simulation"].setdefault("shear", {}).update(
            period_s=-1), "experiments.twin_demo.synthetic.simulation.shear.period_s"),
        (lambda c: c["experiments"].update(real={"video": {"path": "x.tif", "frame_rate_hz": 10}}),
         "experiments.real.video.pixel_size_um"),
        (lambda c: c["experiments"].update(both={"video": {}, "synthetic": {}}), "both"),
        (lambda c: c.update(experimets={}), "experimets"),
        # each stage's own schema file is enforced through the main schema
        (lambda c: c["experiments"]["twin_demo"].update(tracking={"locate": {"diameterr": 11}}),
         "experiments.twin_demo.tracking.locate.diameterr"),
        (lambda c: c["experiments"]["twin_demo"].update(geometry={"reference": "first"}),
         "experiments.twin_demo.geometry.reference"),
        (lambda c: c["experiments"]["twin_demo"].update(model={"training": {"epoch": 3}}),
         "experiments.twin_demo.model.training.epoch"),
        (lambda c: c["experiments"]["twin_demo"].update(analysis={"rdf_bins": 2}),
         "experiments.twin_demo.analysis.rdf_bins"),
        # a twin's LAMMPS rollout tiles its 2D sheared box; a recording has no box to tile
        (lambda c: c["experiments"]["twin_demo"].update(lammps={"tiles": [2, 2, 2]}),
         "experiments.twin_demo.lammps.tiles"),
        (lambda c: c["experiments"]["twin_demo"].update(lammps={"data_file": "sample.data"}),
         "experiments.twin_demo.lammps.data_file"),
        (lambda c: c["experiments"].update(real={"video": {"path": "x.tif", "frame_rate_hz": 10, "pixel_size_um": 1},
                                                 "lammps": {}}), "experiments.real.lammps"),
    ],
)
def test_bad_config_names_the_key(edit, key):
    config = copy.deepcopy(default_config())
    edit(config)
    with pytest.raises(ConfigError) as info:
        validate_config(config, check_paths=False)
    assert key in str(info.value)
    assert "config" in str(info.value)


def test_missing_video_path_is_named(tmp_path):
    config = {"experiments": {"real": {"video": {"path": "no/such/movie.tif", "pixel_size_um": 0.3,
                                                  "frame_rate_hz": 24}}}}
    with pytest.raises(ConfigError, match=r"experiments\.real\.video\.path.*no/such/movie\.tif"):
        validate_config(config, workdir=tmp_path)


def test_glob_matching_nothing_is_named(tmp_path):
    config = {"experiments": {"real": {"video": {"path": "frames/*.png", "pixel_size_um": 0.3,
                                                  "frame_rate_hz": 24}}}}
    (tmp_path / "frames").mkdir()
    with pytest.raises(ConfigError, match=r"frames/\*\.png.*matches no file"):
        validate_config(config, workdir=tmp_path)


def test_folder_of_images_is_accepted_in_natural_order(tmp_path):
    # docs/tracking.md: a folder is a video of its images, frame2 before frame10, as the reader reads it.
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (10, 2, 1):
        (folder / f"frame{i}.png").write_bytes(b"\x89PNG")
    config = {"experiments": {"real": {"video": {"path": "frames", "pixel_size_um": 0.3, "frame_rate_hz": 24}}}}
    validate_config(config, workdir=tmp_path)
    files = video_input_files("frames", tmp_path)
    assert [Path(f).name for f in files] == ["frame1.png", "frame2.png", "frame10.png"]


def test_folder_without_images_is_named(tmp_path):
    (tmp_path / "frames").mkdir()
    config = {"experiments": {"real": {"video": {"path": "frames", "pixel_size_um": 0.3, "frame_rate_hz": 24}}}}
    with pytest.raises(ConfigError, match=r"experiments\.real\.video\.path.*frames holds no image file"):
        validate_config(config, workdir=tmp_path)
    (tmp_path / "frames" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"experiments\.real\.video\.path.*notes\.txt.*unsupported extension"):
        validate_config(config, workdir=tmp_path)


def test_glob_matching_a_folder_is_named(tmp_path):
    (tmp_path / "run1").mkdir()
    config = {"experiments": {"real": {"video": {"path": "run*", "pixel_size_um": 0.3, "frame_rate_hz": 24}}}}
    with pytest.raises(ConfigError, match=r"matches the folder.*run1"):
        validate_config(config, workdir=tmp_path)


@pytest.mark.skipif(sys.platform == "win32" or __import__("os").geteuid() == 0,
                    reason="root can read any file, so permission cannot be denied")
def test_unreadable_video_is_named(tmp_path):
    movie = tmp_path / "movie.tif"
    movie.write_bytes(b"II*\x00")
    movie.chmod(0)
    config = {"experiments": {"real": {"video": {"path": str(movie), "pixel_size_um": 0.3, "frame_rate_hz": 24}}}}
    with pytest.raises(ConfigError, match="cannot be read"):
        validate_config(config)


@pytest.mark.skipif(not BULK_WATER.is_dir(), reason="the shared bulk_water sample (../shared/data/bulk_water) "
                                                    "is not beside the checkout")
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_are_rejected_naming_the_key(value):
    """YAML's .nan and .inf are floats that pass every range of the schema: refused by name."""
    config = {"experiments": {"real": {"video": {"path": "x.tif", "pixel_size_um": value, "frame_rate_hz": 10}}}}
    with pytest.raises(ConfigError, match=r"experiments\.real\.video\.pixel_size_um is -?(nan|inf).*finite"):
        validate_config(config, check_paths=False)
    config = copy.deepcopy(default_config())
    config["experiments"]["twin_demo"]["synthetic"]["simulation"]["shear"] = {"amplitude": value}
    with pytest.raises(ConfigError, match=r"twin_demo\.synthetic\.simulation\.shear\.amplitude is"):
        validate_config(config, check_paths=False)


def test_yaml_nan_reaches_the_check_as_a_float(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("experiments:\n  real:\n    video: {path: x.tif, pixel_size_um: .nan, frame_rate_hz: 10}\n")
    with pytest.raises(ConfigError, match="pixel_size_um is nan"):
        load_config(path, check_paths=False)


@pytest.mark.skipif(not BULK_WATER.is_dir(), reason="needs ../shared/data/bulk_water (real microscopy)")
def test_real_glob_is_accepted():
    config = {"experiments": {"bw": {"video": {"path": str(BULK_WATER / "*.png"), "pixel_size_um": 1 / 2.85,
                                                "frame_rate_hz": 24}}}}
    validate_config(config)


def _schema_keys(node, schema):
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].split("/")[-1]]
    return node["properties"]


@pytest.mark.parametrize("section, cls", [("simulation", twin_params.SimulationParams),
                                          ("microscope", twin_params.MicroscopeParams)])
def test_schema_mirrors_parameter_dataclasses(section, cls):
    """Every parameter has a schema entry and vice versa, nested sections included."""
    schema = load_schema(SCHEMA_PATH)

    def compare(properties, klass):
        fields = {f.name: f for f in dataclasses.fields(klass)}
        assert set(properties) == set(fields), f"{klass.__name__} and the schema differ"
        for name, field in fields.items():
            if field.default_factory is not dataclasses.MISSING:
                compare(properties[name]["properties"], type(field.default_factory()))

    compare(schema["$defs"][section]["properties"], cls)


def test_schema_mirrors_the_star_polymer_and_baseline_parameters():
    """The star-polymer, GNS and DPD keys of the schema are exactly the code's (a typo cannot slip through)."""
    import inspect

    from mpd.baselines.dpd import calibrate_dpd
    from mpd.baselines.gns import GNSParams
    from mpd.horizon import COMPARISON_DEFAULTS
    from twin.star_polymer import StarPolymerParams

    defs = load_schema(SCHEMA_PATH)["$defs"]
    assert set(defs["star_polymer"]["properties"]) == {f.name for f in dataclasses.fields(StarPolymerParams)} | {
        "preset"}
    # stochastic and seed come from the model's name and the comparison's seed
    assert set(defs["gns"]["properties"]) == {f.name for f in dataclasses.fields(GNSParams)} - {"stochastic", "seed"}
    keywords = {name for name, p in inspect.signature(calibrate_dpd).parameters.items() if p.kind == p.KEYWORD_ONLY}
    assert set(defs["comparison"]["properties"]["dpd"]["properties"]) == keywords - {"mass", "seed"}
    assert set(defs["comparison"]["properties"]) == set(COMPARISON_DEFAULTS)


def test_star_polymer_experiments_are_checked_naming_the_key():
    base = {"synthetic": {"star_polymer": {"preset": "SP51"}}, "comparison": {"models": ["learned", "dpd"]}}
    validate_config({"experiments": {"sp": base}})
    cases = [({"synthetic": {"star_polymer": {"preset": "SP11"}, "microscope": {}}}, "keep one kind"),
             ({"synthetic": {"star_polymer": {"preset": "SP99"}}}, "experiments.sp.synthetic.star_polymer.preset"),
             ({"synthetic": {"star_polymer": {"dt": 0.003, "sample_interval_tau": 0.1}}}, "multiple of dt"),
             ({**base, "comparison": {"models": ["lstm"]}}, "experiments.sp.comparison.models.0"),
             ({**base, "comparison": {"dpd": {"budjet": 8}}}, "experiments.sp.comparison.dpd.budjet")]
    for experiment, message in cases:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            validate_config({"experiments": {"sp": experiment}})


def test_unknown_nested_parameter_is_rejected_by_dataclasses_too():
    with pytest.raises(twin_params.ParameterError, match="simulation.shear.amplitud"):
        twin_params.from_dict(twin_params.SimulationParams, {"shear": {"amplitud": 0.1}}, "simulation")


def _snakemake(args, cwd):
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(cwd), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300, check=False)


def test_workflow_stops_on_bad_config_naming_the_key(tmp_path):
    config = default_config()
    config["experiments"]["twin_demo"]["synthetic"]["microscope"]["bit_depth"] = 7
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = _snakemake(["--cores", "1", "--configfile", "bad.yaml"], tmp_path)
    assert result.returncode != 0
    assert "experiments.twin_demo.synthetic.microscope.bit_depth" in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()


def test_workflow_stops_on_missing_input_naming_it(tmp_path):
    config = {"experiments": {"real": {"video": {"path": "missing_run/*.tif", "pixel_size_um": 0.3,
                                                  "frame_rate_hz": 24}}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = _snakemake(["--cores", "1", "--configfile", "c.yaml"], tmp_path)
    assert result.returncode != 0
    assert "missing_run/*.tif" in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()
