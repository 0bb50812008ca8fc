"""The Boutiques descriptor of vaefusion, shipped as package data.

The canonical file is ``vaefusion/data/boutiques.json`` (installed with the package, so that
``vaefusion --boutiques`` works without the repository); the repository's top-level
``boutiques.json`` is an identical copy for platforms that look for it there. The test suite
checks that the two are identical and that the descriptor and :func:`build_parser` never
drift apart.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

#: Where the descriptor lives inside the package.
RESOURCE = ("data", "boutiques.json")


def descriptor_text() -> str:
    """The descriptor as shipped, without its final newline.

    ``print(descriptor_text())`` therefore reproduces ``boutiques.json`` byte for byte.
    """
    text = resources.files("vaefusion").joinpath(*RESOURCE).read_text(encoding="utf-8")
    return text.rstrip("\n")


def descriptor() -> dict[str, Any]:
    """The descriptor as a dict."""
    return json.loads(descriptor_text())

