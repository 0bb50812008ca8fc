"""What a result depends on besides the data and the settings: the versions of the software.

``group/summary.json`` records them (with the seeds and the classifier backend) and every log
starts with them, so a number can be traced to the code that produced it.
"""

from __future__ import annotations

import platform
from importlib import metadata

#: Distributions whose versions change results (name in the package index).
DISTRIBUTIONS = ("torch", "numpy", "scipy", "scikit-learn", "nibabel", "nipype", "pybids")


def software_versions() -> dict[str, str]:
    """``{"python": "3.11.9", "vaefusion": "0.1.0", "torch": "2.5.1", ...}``; a distribution
    that is not installed is left out."""
    from vaefusion import __version__

    versions = {"python": platform.python_version(), "vaefusion": __version__}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def versions_line() -> str:
    """The versions as one log line: ``python 3.11.9, vaefusion 0.1.0, torch 2.5.1, ...``."""
    return ", ".join(f"{k} {v}" for k, v in software_versions().items())
