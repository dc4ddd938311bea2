"""The `model:` config section: dataclass defaults, unknown keys named, the schema fragment mirrors them."""
import dataclasses
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from mpd.params import ModelConfig, NetworkParams, ParameterError, RolloutParams, TrainingParams, to_dict

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1] / "mpd" / "model_schema.yaml").read_text())
SECTIONS = {"network": NetworkParams, "training": TrainingParams, "rollout": RolloutParams}


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"trainig": {}}, "model.trainig"),
        ({"training": {"epoch": 3}}, "model.training.epoch"),
        ({"network": {"hidden": [8]}}, "model.network.hidden"),
        ({"rollout": {"skin_h": 0.2}}, "model.rollout.skin_h"),
    ],
)
def test_from_config_rejects_unknown_keys_by_name(section, key):
    with pytest.raises(ParameterError, match=f"unknown key {key.replace('.', '[.]')}"):
        ModelConfig.from_config(section)
    errors = list(Draft202012Validator(SCHEMA).iter_errors(section))
    assert errors and errors[0].validator == "additionalProperties"


def test_each_part_rejects_unknown_keys_and_names_its_section():
    with pytest.raises(ParameterError, match="model.training.lr"):
        TrainingParams.from_config({"lr": 0.1})
    with pytest.raises(ParameterError, match="model.rollout.dt"):
        RolloutParams.from_config({"dt": 0.1})


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"training": {"epochs": 0}}, "model.training.epochs"),
        ({"training": {"learning_rate": -1.0}}, "model.training.learning_rate"),
        ({"training": {"schedule": "linear"}}, "model.training.schedule"),
        ({"training": {"dtype": "float16"}}, "model.training.dtype"),
        ({"training": {"batch_size": True}}, "model.training.batch_size"),
        ({"network": {"energy_hidden": []}}, "model.network.energy_hidden"),
        ({"network": {"k_B_init": "guess"}}, "model.network.k_B_init"),
        ({"rollout": {"skin": -0.1}}, "model.rollout.skin"),
        ({"rollout": {"device": "tpu"}}, "model.rollout.device"),
        ({"training": {"recompute_activations": "sometimes"}}, "model.training.recompute_activations"),
        ({"training": {"compile_pairs": "yes"}}, "model.training.compile_pairs"),
    ],
)
def test_out_of_range_values_are_rejected_by_both_the_dataclasses_and_the_schema(section, key):
    with pytest.raises(ParameterError, match=key.replace(".", "[.]")):
        ModelConfig.from_config(section)
    assert list(Draft202012Validator(SCHEMA).iter_errors(section))


def test_partial_config_keeps_the_other_defaults_and_lists_become_tuples():
    config = ModelConfig.from_config({"training": {"epochs": 7}, "network": {"energy_hidden": [16, 16, 16]}})
    assert config.training.epochs == 7
    assert config.training.learning_rate == TrainingParams().learning_rate
    assert config.network.energy_hidden == (16, 16, 16)
    assert config.rollout == RolloutParams()
    assert ModelConfig.from_config(None) == ModelConfig()


def keys_of(node) -> set:
    """Every mapping key anywhere in a nested YAML document."""
    if isinstance(node, dict):
        return set(node).union(*(keys_of(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(keys_of(v) for v in node))
    return set()


def test_schema_mirrors_the_dataclasses_and_sets_no_defaults():
    assert set(SCHEMA["properties"]) == set(SECTIONS)
    for name, cls in SECTIONS.items():
        section = SCHEMA["properties"][name]
        assert section["additionalProperties"] is False
        assert set(section["properties"]) == {f.name for f in dataclasses.fields(cls)}, name
    assert "default" not in keys_of(SCHEMA)
    Draft202012Validator.check_schema(SCHEMA)
    # the defaults themselves are valid configuration
    assert not list(Draft202012Validator(SCHEMA).iter_errors(to_dict(ModelConfig())))


def test_training_hash_ignores_progress_and_device_but_not_hyperparameters():
    base = ModelConfig()
    assert ModelConfig.from_config({"training": {"progress": False, "device": "cpu"}}).training_hash() == (
        base.training_hash())
    assert ModelConfig.from_config({"training": {"learning_rate": 0.01}}).training_hash() != base.training_hash()
    assert ModelConfig.from_config({"rollout": {"skin": 0.5}}).training_hash() == base.training_hash()
    how = {"compile_pairs": True, "recompute_activations": "always"}  # how it is computed, not what
    assert ModelConfig.from_config({"training": how}).training_hash() == base.training_hash()


def test_recompute_modes_of_the_config_are_the_models():
    from mpd.model.layers import RECOMPUTE_MODES
    from mpd.params import RECOMPUTE_MODES as CONFIG_MODES

    assert CONFIG_MODES == RECOMPUTE_MODES
    assert ModelConfig.from_config({"training": {"recompute_activations": "always"}}).training.recompute_activations == (
        "always")
