"""What produced a result: recorded in every stage's metadata so a result can be traced and reproduced."""
from __future__ import annotations

import platform
from importlib import metadata


def software_versions(*packages: str) -> dict[str, str | None]:
    """Python's, this project's and the named distributions' versions (None where not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("colloid-mpd", *packages):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
