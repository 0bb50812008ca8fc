"""``--bids-filter-file``: pybids entity filters that steer which files discovery picks.

``{"icn": {...}, "gmv": {...}}`` updates the default query of each input; every key must be a
pybids entity, so a typo is a usage error (exit 64) rather than a pybids crash later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vaefusion.errors import UsageError, option_file_error

NIFTI_EXT = [".nii", ".nii.gz"]


#: Default pybids queries for the two inputs; ``--bids-filter-file`` entries update them.
DEFAULT_QUERIES: dict[str, dict[str, Any]] = {
    "icn": {"suffix": "components", "extension": NIFTI_EXT},
    "gmv": {"suffix": "probseg", "label": "GM", "extension": NIFTI_EXT},
}


def pybids_entities() -> set[str]:
    """Every entity name that pybids knows (raw BIDS and derivatives), for checking filters."""
    from bids.layout.models import Config as BIDSConfig

    return set(BIDSConfig.load("bids").entities) | set(BIDSConfig.load("derivatives").entities)


def check_bids_filters(data: object, source: str) -> dict[str, dict[str, Any]]:
    """``{"icn": {...}, "gmv": {...}}`` with known pybids entities, else UsageError (exit 64)."""
    if not isinstance(data, dict) or set(data) - set(DEFAULT_QUERIES):
        got = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise UsageError(
            f"{source} must be a JSON object with keys among {', '.join(DEFAULT_QUERIES)} "
            f"(got {got or 'none'}), e.g. {{\"icn\": {{\"desc\": \"neuromark\"}}}}."
        )
    known = pybids_entities()
    for kind, query in data.items():
        if not isinstance(query, dict):
            raise UsageError(f"{source}: \"{kind}\" must map entity names to values, e.g. "
                             f"{{\"{kind}\": {{\"desc\": \"neuromark\"}}}}.")
        unknown = sorted(set(query) - known)
        if unknown:
            raise UsageError(
                f"{source}: \"{kind}\" names unknown BIDS entit"
                f"{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; use pybids "
                f"entity names (e.g. subject, session, task, space, res, desc, label, suffix)."
            )
    return data


def load_bids_filters(path: Path | None) -> dict[str, dict[str, Any]]:
    """Read ``--bids-filter-file``: ``{"icn": {...}, "gmv": {...}}`` pybids entity filters."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:  # missing, a dangling link, a folder, no permission
        raise option_file_error("--bids-filter-file", path, exc, "JSON") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"--bids-filter-file {path} is not valid JSON ({exc}); fix its syntax."
        ) from None
    return check_bids_filters(data, f"--bids-filter-file {path}")
