"""Checks of the options that name inputs, run before anything is created.

A mistake in an option (a label with path characters, a filter file that is not JSON or names
unknown entities, a model that cannot be used) must end the run before the output dataset or
the work dir exists, so a failed run leaves nothing behind. (``--use-plugin`` is checked by
the CLI, which owns the workflow engine.)
"""

from __future__ import annotations

from vaefusion.config import Config
from vaefusion.errors import UsageError
from vaefusion.inputs.identifiers import LABEL_RE


def check_labels(cfg: Config) -> None:
    """``--participant-label`` and ``--session-label`` values are BIDS labels."""
    for option, values in (("--participant-label", cfg.participant_label),
                           ("--session-label", cfg.session_label)):
        for value in values or []:
            if not LABEL_RE.match(str(value)):
                raise UsageError(
                    f"{option} '{value}' is not a BIDS label (letters and digits only, with or "
                    f"without the sub-/ses- prefix)."
                )


def check_inputs(cfg: Config, latent_dims_given: bool = False) -> None:
    """Every input-naming option, without creating anything (raises a VaefusionError)."""
    from vaefusion.inputs.discovery import derivative_dirs
    from vaefusion.inputs.filters import check_bids_filters, load_bids_filters
    from vaefusion.inputs.model_check import check_model
    from vaefusion.inputs.participants import read_participants

    check_labels(cfg)
    if cfg.bids_filters:
        check_bids_filters(cfg.bids_filters, "bids_filters")
    else:
        load_bids_filters(cfg.bids_filter_file)
    derivative_dirs(cfg)
    assert cfg.bids_dir is not None
    read_participants(cfg.bids_dir, cfg, warn=False)  # discovery warns, into the log file
    if cfg.model is not None:
        check_model(cfg, latent_dims_given)
