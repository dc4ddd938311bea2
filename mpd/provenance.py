"""What produced a result: recorded in every stage's metadata so a result can be traced and reproduced."""
from __future__ import annotations

import hashlib
import importlib
import platform
from importlib import metadata
from pathlib import Path


def software_versions(*packages: str) -> dict[str, str | None]:
    """Python's, this project's and the named distributions' versions (None where not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("colloid-mpd", *packages):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def source_fingerprint(*modules: str) -> str:
    """Hash of the source files of the named modules (a package: every .py file under it), 16 hex digits.

    Identifies the code that produced a result, editable installs and source trees included (a
    version number does not change while code is edited).
    """
    digest = hashlib.sha256()
    for name in modules:
        module = importlib.import_module(name)
        origin = Path(module.__file__)
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for path in files:
            digest.update(str(path.relative_to(origin.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
