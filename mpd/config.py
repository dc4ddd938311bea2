"""Validation of the pipeline configuration (``config.yaml``).

The workflow calls :func:`validate_config` once, before any rule runs, so a
bad configuration stops everything with one message that names the offending
key and says how to fix it, and no output is touched.
"""
from __future__ import annotations

import glob
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the fix."""


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def _retrieve_file(uri: str):
    """Resolve a $ref to another schema file (each stage keeps its own section's schema)."""
    from referencing import Resource

    path = Path(unquote(urlparse(uri).path))
    return Resource.from_contents(load_schema(path))


def config_validator():
    """A validator of the whole config, with the stages' schema files resolved by relative $ref."""
    from jsonschema import Draft202012Validator
    from referencing import Registry

    schema = load_schema()
    schema["$id"] = SCHEMA_PATH.as_uri()
    return Draft202012Validator(schema, registry=Registry(retrieve=_retrieve_file))


def _dotted(path) -> str:
    return ".".join(str(part) for part in path) or "(top level)"


def _describe(error) -> str:
    """One sentence for one jsonschema error, naming the dotted key."""
    where = _dotted(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - allowed)
        key = f"{where}.{unknown[0]}" if error.absolute_path else unknown[0]
        hint = f"allowed keys here: {', '.join(sorted(allowed))}" if allowed else "remove it"
        return f"unknown key '{key}' ({hint})"
    if error.validator == "required":
        missing = error.message.split("'")[1]
        key = f"{where}.{missing}" if error.absolute_path else missing
        return f"missing key '{key}'"
    if error.validator == "oneOf" and isinstance(error.instance, Mapping) and (
        "video" in error.schema.get("properties", {})
    ):
        return (
            f"experiment '{where.split('.')[-1]}' must have exactly one of "
            f"'video' (a real recording) or 'synthetic' (a digital twin)"
        )
    if error.validator == "not" and isinstance(error.instance, Mapping) and "star_polymer" in error.instance:
        return (f"'{where}' has both 'star_polymer' (a simulated bulk sample) and "
                f"'simulation'/'microscope' (a filmed colloid twin); keep one kind per experiment")
    return f"'{where}': {error.message}"


def validate_config(config: Mapping[str, Any], *, check_paths: bool = True, workdir: Path | None = None) -> dict:
    """Check ``config`` against the schema and return it unchanged as a dict.

    Raises ConfigError naming the first offending key (jsonschema's best match),
    and, with ``check_paths``, naming any video path that does not exist or
    cannot be read. Relative paths are resolved against ``workdir`` (default:
    the current directory, which is Snakemake's working directory).
    """
    from jsonschema.exceptions import best_match

    if not isinstance(config, Mapping):
        raise ConfigError("the configuration must be a mapping with an 'experiments' key")
    _check_finite(config)
    error = best_match(config_validator().iter_errors(dict(config)))
    if error is not None:
        raise ConfigError(
            f"invalid configuration: {_describe(error)}. "
            f"Fix the key in config.yaml (or your --configfile); the allowed keys, types and ranges "
            f"are in {SCHEMA_PATH.relative_to(REPO_ROOT)}."
        )
    _check_nested_params(config)
    if check_paths:
        for name, experiment in config["experiments"].items():
            if "video" in experiment:
                video_input_files(experiment["video"]["path"], workdir, key=f"experiments.{name}.video.path")
            data_file = (experiment.get("lammps") or {}).get("data_file")
            if data_file and not (Path(workdir or ".") / data_file).is_file():
                raise ConfigError(f"experiments.{name}.lammps.data_file: {data_file} does not exist (relative paths "
                                  "are from the working directory): give the path of a LAMMPS data file")
    return dict(config)


def _check_finite(node: Any, path: tuple = ()) -> None:
    """Every number in the configuration must be finite: YAML's .nan and .inf pass a schema's ranges."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            _check_finite(value, (*path, key))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            _check_finite(value, (*path, index))
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"invalid configuration: {_dotted(path)} is {node}; every number must be finite. "
                          f"Fix the key in config.yaml (or your --configfile).")


def _check_nested_params(config: Mapping[str, Any]) -> None:
    """Build each stage's parameter objects once, so their own checks run before any rule."""
    from twin.params import MicroscopeParams, ParameterError, SimulationParams, from_dict

    for name, experiment in config["experiments"].items():
        synthetic = experiment.get("synthetic")
        if "lammps" in experiment and synthetic is None:
            raise ConfigError(f"invalid configuration: experiments.{name}.lammps: the LAMMPS rollout of a large "
                              f"sample needs a simulated sample (a digital twin or synthetic.star_polymer) whose "
                              f"periodic box it tiles, and {name} is a recording. Remove the lammps section or fix "
                              f"it in config.yaml.")
        if "lammps" in experiment and "star_polymer" in synthetic and \
                len((experiment["lammps"] or {}).get("tiles", [2, 2, 2])) != 3:
            raise ConfigError(f"invalid configuration: experiments.{name}.lammps.tiles: a bulk sample's box is "
                              f"three-dimensional: give three numbers [tx, ty, tz] in config.yaml.")
        if "lammps" in experiment and "star_polymer" not in synthetic:
            lammps = experiment["lammps"] or {}
            if "data_file" in lammps:
                raise ConfigError(f"invalid configuration: experiments.{name}.lammps.data_file: a digital twin's "
                                  f"LAMMPS sample is its truth's sheared box; data_file is for bulk samples. Remove "
                                  f"it in config.yaml.")
            if len(lammps.get("tiles", [2, 2])) != 2:
                raise ConfigError(f"invalid configuration: experiments.{name}.lammps.tiles: a digital twin's box is "
                                  f"two-dimensional: give two numbers [tx, ty] in config.yaml.")
        if synthetic is None:
            continue
        if "star_polymer" in synthetic:
            from twin.star_polymer import params_from_config

            try:
                params_from_config(synthetic["star_polymer"], f"experiments.{name}.synthetic.star_polymer")
            except ParameterError as exc:
                raise ConfigError(f"invalid configuration: {exc}. Fix it in config.yaml.") from exc
            continue
        for key, cls in (("simulation", SimulationParams), ("microscope", MicroscopeParams)):
            where = f"experiments.{name}.synthetic.{key}"
            try:
                from_dict(cls, synthetic.get(key), where)
            except (ParameterError, TypeError, ValueError) as exc:
                raise ConfigError(f"invalid configuration: {exc}. Fix it in config.yaml.") from exc


def video_input_files(path: str, workdir: Path | None = None, *, key: str = "video.path") -> list[str]:
    """The files behind a video ``path`` (a file, a folder of images or a glob), checked to be readable.

    A folder stands for its image files in the order the tracking stage reads
    them (pims's natural sort: ``frame2`` before ``frame10``), checked as the
    reader checks them (tracking.io.resolve_source), so the config check and
    the reader accept the same folders. Raises ConfigError naming ``key`` and
    the path when nothing is there or a file cannot be read.
    """
    base = Path(workdir) if workdir is not None else Path.cwd()
    pattern = path if os.path.isabs(path) else str(base / path)
    if glob.has_magic(pattern):
        files = sorted(glob.glob(pattern))
        if not files:
            raise ConfigError(
                f"{key}: the pattern '{path}' matches no file (looked in {base}). "
                "Check the path and the pattern, e.g. 'data/run1/*.png'."
            )
    elif os.path.isdir(pattern):
        files = _folder_images(pattern, key)
    else:
        if not os.path.exists(pattern):
            raise ConfigError(
                f"{key}: the input '{path}' does not exist (looked in {base}). "
                "Fix the path, relative to the directory you run snakemake in, or make it absolute."
            )
        files = [pattern]
    for file in files:
        if os.path.isdir(file):
            raise ConfigError(
                f"{key}: the pattern '{path}' matches the folder '{file}'; narrow it to image files, "
                f"e.g. '{path.rstrip('/')}/*.tif'."
            )
        if not os.access(file, os.R_OK):
            raise ConfigError(f"{key}: '{file}' cannot be read (permission denied). Fix its permissions.")
    return files


def _folder_images(folder: str, key: str) -> list[str]:
    """The image files of a folder, as the tracking stage's reader lists and checks them."""
    from tracking.io import TrackingInputError, resolve_source

    try:
        return resolve_source(folder)[1]
    except TrackingInputError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def load_config(path: str | os.PathLike, **kwargs) -> dict:
    """Read and validate a YAML configuration file."""
    path = Path(path)
    try:
        with open(path) as handle:
            config = yaml.safe_load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file '{path}' does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file '{path}' is not valid YAML: {exc}") from exc
    return validate_config(config or {}, **kwargs)
