"""What a result depends on besides the data and the settings: the versions of the software.

``group/summary.json`` records them (with the seeds and the classifier backend) and every log
starts with them, so a number can be traced to the code that produced it.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

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


def container(environ: Mapping[str, str] | None = None, root: Path = Path("/")) -> dict | None:
    """``GeneratedBy[0].Container`` of the output: the container this process runs in, as its
    runtime says, or None outside one (a pip install claims no container).

    Apptainer/Singularity set ``APPTAINER_CONTAINER``/``SINGULARITY_CONTAINER`` (the image
    file) and ``*_NAME``; Podman writes ``/run/.containerenv`` with the image reference; Docker
    leaves only ``/.dockerenv``, without the image, so no ``Tag`` is claimed.
    """
    env = os.environ if environ is None else environ
    for runtime in ("APPTAINER", "SINGULARITY"):
        image = env.get(f"{runtime}_CONTAINER") or env.get(f"{runtime}_NAME")
        if image:
            found = {"Type": "singularity", "Tag": Path(image).name}
            if Path(image).is_absolute():
                found["URI"] = Path(image).as_uri()
            return found
    try:
        podman = (root / "run" / ".containerenv").read_text()
    except OSError:
        podman = None
    if podman is not None:
        match = re.search(r'^image="([^"]+)"', podman, re.MULTILINE)
        return {"Type": "docker", "Tag": match.group(1)} if match else {"Type": "docker"}
    if (root / ".dockerenv").exists():
        return {"Type": "docker"}
    return None
