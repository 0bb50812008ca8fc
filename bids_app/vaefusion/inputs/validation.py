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


#: Validator issue codes that are not fatal, after fMRIPrep's choice
#: (``fmriprep.utils.bids.validate_input_dir``): inconsistencies across subjects and sessions
#: (a run validates only the selected subjects, so participants.tsv lists others), and
#: tabular or events details that vaefusion never reads. docs/reliability.md lists them.
IGNORED_CODES = frozenset({
    "INCONSISTENT_SUBJECTS", "INCONSISTENT_PARAMETERS", "PARTICIPANT_ID_COLUMN",
    "PARTICIPANT_ID_MISMATCH", "PHENOTYPE_SUBJECTS_MISSING", "TSV_EQUAL_ROWS",
    "TSV_EMPTY_CELL", "TSV_IMPROPER_NA", "EVENTS_COLUMN_ONSET", "EVENTS_COLUMN_DURATION",
    "EVENTS_TSV_MISSING", "TASK_NAME_MUST_DEFINE", "STIMULUS_FILE_MISSING", "UNUSED_STIMULUS",
    "VOLUME_COUNT_MISMATCH", "ACQTIME_FMT", "CUSTOM_COLUMN_WITHOUT_DESCRIPTION",
    "MISSING_SESSION", "SUSPICIOUSLY_LONG_EVENT_DESIGN", "SUSPICIOUSLY_SHORT_EVENT_DESIGN",
})

#: Seconds the validator may take before the run ends with exit 16.
VALIDATOR_TIMEOUT_S = 600.0


def _unusable(bids_dir: Path, why: str) -> VaefusionError:
    return VaefusionError(f"{VALIDATOR} could not validate {bids_dir} ({why}); rerun, or pass "
                          f"--skip-bids-validation to run without validating the input.",
                          EXIT_BIDS_INVALID)


def run_validator(dataset: Path, timeout: float = VALIDATOR_TIMEOUT_S) -> dict:
    """Run the validator on ``dataset`` and return its JSON report; a timeout or output that
    is no JSON report is exit 16 with a sentence that offers ``--skip-bids-validation``."""
    exe = find_validator()
    if exe is None:
        raise FileNotFoundError(VALIDATOR)
    try:
        proc = subprocess.run([exe, str(dataset), "--format", "json"], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise _unusable(dataset, f"it ran past its {timeout:g} s limit") from None
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        said = (proc.stderr.strip() or proc.stdout.strip())[:300] or "no output"
        raise _unusable(dataset, f"it gave no JSON report: {said}") from None
    if not isinstance(report, dict):
        raise _unusable(dataset, "its report is not a JSON object")
    return report


def selected_tree(bids_dir: Path, subjects: list[str], into: Path) -> Path:
    """What a run reads, as a tree of symbolic links in ``into``: the top-level files and the
    folders of the ``subjects`` selected (as fMRIPrep validates), so that an invalid subject
    that is not selected does not stop the run."""
    wanted = {f"sub-{s}" for s in subjects}
    for entry in sorted(Path(bids_dir).iterdir()):
        if entry.is_file() or entry.name in wanted:
            (into / entry.name).symlink_to(entry.resolve())
    return into


def validate_input(bids_dir: Path, log_dir: Path, subjects: list[str] | None = None) -> None:
    """Validate what the run reads (the top-level files and, with ``subjects``, only those
    subjects' folders); exit 16 with the first error named when it is invalid.

    Codes in :data:`IGNORED_CODES` are not fatal. The full report goes to
    ``logs/bids_validator.json``. When the validator is not installed the run goes on with a
    warning (install ``bids-validator-deno`` or pass ``--skip-bids-validation`` to silence it).
    """
    import tempfile

    try:
        if subjects:
            with tempfile.TemporaryDirectory(prefix="vaefusion_validate_") as tmp:
                report = run_validator(selected_tree(bids_dir, subjects, Path(tmp)))
        else:
            report = run_validator(bids_dir)
    except FileNotFoundError:
        LOG.warning("%s is not installed: the input dataset was NOT validated (pip install "
                    "bids-validator-deno, or pass --skip-bids-validation).", VALIDATOR)
        return
    atomic_write_text(log_dir / "bids_validator.json", json.dumps(report, indent=1))
    errors = [e for e in validator_errors(report) if e.get("code") not in IGNORED_CODES]
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
