"""Input validation with the BIDS validator (``bids-validator-deno``)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from vaefusion.disk.io import atomic_write_text
from vaefusion.errors import EXIT_BIDS_INVALID, VaefusionError

LOG = logging.getLogger("vaefusion.validation")


VALIDATOR = "bids-validator-deno"


def validator_errors(report: dict) -> list[dict]:
    """The error-severity issues of a validator JSON report."""
    issues = report.get("issues", {})
    items = issues.get("issues", []) if isinstance(issues, dict) else issues
    return [i for i in items if i.get("severity") == "error"]


def find_validator() -> str | None:
    """The validator on PATH, or beside this Python (a virtualenv that is not activated)."""
    exe = shutil.which(VALIDATOR)
    if exe is None:
        local = Path(sys.executable).parent / VALIDATOR
        exe = str(local) if local.is_file() else None
    return exe


def run_validator(dataset: Path, timeout: float = 600) -> dict:
    """Run the validator on ``dataset`` and return its JSON report."""
    exe = find_validator()
    if exe is None:
        raise FileNotFoundError(VALIDATOR)
    proc = subprocess.run([exe, str(dataset), "--format", "json"], capture_output=True,
                          text=True, timeout=timeout)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(
            f"{VALIDATOR} gave no JSON report: {proc.stderr.strip()[:500]}"
        ) from None


def validate_input(bids_dir: Path, log_dir: Path) -> None:
    """Validate the input dataset; exit 16 with the first error named when it is invalid.

    The full report goes to ``logs/bids_validator.json``. When the validator is not installed
    the run goes on with a warning (install ``bids-validator-deno`` or pass
    ``--skip-bids-validation`` to silence it).
    """
    try:
        report = run_validator(bids_dir)
    except FileNotFoundError:
        LOG.warning("%s is not installed: the input dataset was NOT validated (pip install "
                    "bids-validator-deno, or pass --skip-bids-validation).", VALIDATOR)
        return
    atomic_write_text(log_dir / "bids_validator.json", json.dumps(report, indent=1))
    errors = validator_errors(report)
    if errors:
        first = errors[0]
        where = first.get("location", "")
        raise VaefusionError(
            f"{bids_dir} is not valid BIDS: {len(errors)} error(s), first {first.get('code')} at "
            f"{where} (full report: {log_dir / 'bids_validator.json'}); fix the dataset or pass "
            f"--skip-bids-validation.",
            EXIT_BIDS_INVALID,
        )
    LOG.info("BIDS validation passed (%s)", VALIDATOR)

