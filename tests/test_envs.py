"""--use-conda: every rule names an environment, and the environments pin what pyproject pins."""
import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "workflow" / "envs"
# conda-forge names of the PyPI distributions that differ
CONDA_NAME = {"torch": "pytorch", "freud-analysis": "freud", "opencv-python-headless": "py-opencv"}
# optional extras whose packages a conda env may carry (a pip install leaves them out)
EXTRAS = ("images",)


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    optional = [r for extra in EXTRAS for r in project["optional-dependencies"][extra]]
    for requirement in project["dependencies"] + optional:
        name, spec = re.match(r"^([A-Za-z0-9_.-]+(?:\[[^\]]+\])?)\s*(.*)$", requirement).groups()
        pins[name.lower()] = spec.replace(" ", "")
    return pins


def env_pins(path: Path) -> dict[str, str]:
    pins = {}
    for entry in yaml.safe_load(path.read_text())["dependencies"]:
        for requirement in entry["pip"] if isinstance(entry, dict) else [entry]:
            name, spec = re.match(r"^([A-Za-z0-9_.-]+(?:\[[^\]]+\])?)\s*(.*)$", requirement).groups()
            pins[name.lower()] = spec.replace(" ", "")
    return pins


def rule_blocks():
    """(rule name, body) of every rule and `use rule` in workflow/rules."""
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        starts = [(m.start(), m.group(1) or m.group(2))
                  for m in re.finditer(r"^(?:rule (\w+):|use rule \w+ as (\w+) with:)", text, re.MULTILINE)]
        if not starts:
            continue  # helpers only (common.smk)
        for (start, name), (end, _) in zip(starts, starts[1:] + [(len(text), None)], strict=True):
            yield smk.name, name, text[start:end]


def test_every_rule_names_an_existing_env():
    rules = list(rule_blocks())
    assert len(rules) >= 10
    for smk, name, body in rules:
        if body.startswith("use rule"):
            continue  # inherits the conda env of the rule it reuses
        match = re.search(r'conda:\s*\n\s*"([^"]+)"', body)
        assert match, f"rule {name} in {smk} names no conda env"
        assert (REPO / "workflow" / "rules" / match.group(1)).resolve().exists(), match.group(1)


@pytest.mark.parametrize("env", sorted(p.name for p in ENVS.glob("*.yaml")))
def test_env_pins_match_pyproject(env):
    pins = pyproject_pins()
    conda_to_pypi = {CONDA_NAME.get(name, name): name for name in pins}
    for name, spec in env_pins(ENVS / env).items():
        if name in ("python", "pip"):
            continue
        assert name in conda_to_pypi, f"{env}: {name} is not a dependency in pyproject.toml"
        assert spec == pins[conda_to_pypi[name]], f"{env}: {name}{spec} but pyproject has {pins[conda_to_pypi[name]]}"
