"""The ``vaefusion`` entry point: configuration, guards, logging, and the analysis levels.

Every run ends with one line that says how it ended (success, failure or interrupted), with
the exit code and, after a crash, the crash file; the run's status file
(``OUTPUT_DIR/logs/status-<run id>.json``) says the same. Ctrl-C (SIGINT) and SIGTERM stop the
whole run, worker processes included, and exit 130 or 143; training checkpoints and finished
units stay in the work dir, so the same command resumes. The configuration is built in
:mod:`configure`, the folders checked in :mod:`paths`, and the run ended in :mod:`ending`.
Every run has its own id, which names its status, configuration, log and crash files, so that
the participant jobs of an array may share one OUTPUT_DIR; the group level lists them all
(:mod:`runs`).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path

from vaefusion import __version__
from vaefusion.cli.configure import build_config
from vaefusion.cli.ending import (
    ENDING,
    RunRecord,
    after_success,
    crashed,
    drop_interrupt_crash_files,
    finish,
    input_read_error,
    summary_path,
)
from vaefusion.cli.parser import build_parser
from vaefusion.cli.paths import check_paths, creatable, create_work_dir, default_work_dir
from vaefusion.cli.runs import log_runs
from vaefusion.cli.signals import stop_signals
from vaefusion.config import Config
from vaefusion.disk import naming
from vaefusion.errors import EXIT_OK, Interrupted, VaefusionError, disk_full_error

LOG = logging.getLogger("vaefusion")

# re-exported: other entry points and the tests import these from here
__all__ = ["ENDING", "RunRecord", "build_config", "check_paths", "creatable", "default_work_dir",
           "finish", "main", "run", "setup_logging", "summary_path"]


def setup_logging(cfg: Config | None, verbose: int = 0) -> Path | None:
    """Console logging now; a log file in OUTPUT_DIR/logs once that folder exists."""
    level = logging.DEBUG if verbose >= 2 else logging.INFO
    root = logging.getLogger("vaefusion")
    root.setLevel(logging.DEBUG)  # the log file gets DEBUG lines; the terminal ``level``
    consoles = [h for h in root.handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    if not consoles:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s",
                                               "%H:%M:%S"))
        root.addHandler(console)
        consoles = [console]
    for console in consoles:
        console.setLevel(level)
    if cfg is None or cfg.output_dir is None:
        return None
    stamp = cfg.run_id or time.strftime("%Y%m%d-%H%M%S")
    path = naming.log_file(cfg.output_dir, cfg.analysis_level, stamp)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s [%(levelname)s] %(message)s"))
    root.addHandler(handler)
    return path


def run(cfg: Config, latent_dims_given: bool = False, record: RunRecord | None = None) -> int:
    """Run one analysis level with a validated configuration."""
    from vaefusion.derivatives.dataset import init_output_dir
    from vaefusion.derivatives.provenance import versions_line
    from vaefusion.inputs.options import check_inputs
    from vaefusion.inputs.validation import validate_input
    from vaefusion.workflows.base import plugin_settings, reporting
    from vaefusion.workflows.status import RunStatus

    record = record if record is not None else RunRecord()
    check_paths(cfg)
    check_inputs(cfg, latent_dims_given)
    plugin_settings(cfg)  # a missing or malformed --use-plugin file: exit 64 now, not later
    if cfg.dry_run:  # every check above, then what the run would do; nothing is created
        from vaefusion.cli.dry_run import describe_run

        print(describe_run(cfg))
        return EXIT_OK
    # every option is checked: only now is anything created
    create_work_dir(cfg)
    init_output_dir(cfg)
    assert cfg.output_dir is not None
    record.log_file = setup_logging(cfg, cfg.verbose)
    record.status = RunStatus(naming.status_file(cfg.output_dir, cfg.run_id),
                              cfg.analysis_level, record.log_file).start()
    record.status.note("run_id", cfg.run_id)
    if cfg.participant_label:
        record.status.note("participant_label", cfg.participant_label)
    if cfg.analysis_level == "group":  # a summary of an earlier run would read as this one's
        summary_path(cfg).unlink(missing_ok=True)
    LOG.info("vaefusion %s: %s level on %s", __version__, cfg.analysis_level, cfg.bids_dir)
    LOG.info("Software: %s", versions_line())
    LOG.info("Run %s; work dir: %s; status: %s", cfg.run_id, cfg.work_dir,
             naming.status_file(cfg.output_dir, cfg.run_id))
    if cfg.analysis_level == "group":  # what the participant jobs (an array) left behind
        log_runs(cfg.output_dir, cfg.run_id)
    record.status.phase("validating the input")
    if cfg.skip_bids_validation:
        LOG.info("BIDS validation skipped (--skip-bids-validation)")
    else:
        # only what the run reads: the selected subjects and the top-level files
        validate_input(cfg.bids_dir, naming.logs_dir(cfg.output_dir), cfg.participant_label)
    if cfg.bf16 and cfg.analysis_level == "group":
        import torch

        if cfg.device == "cpu" or not torch.cuda.is_available():
            LOG.warning("--bf16 applies to CUDA only: training runs in fp32 on the CPU.")
    record.status.phase("finding the input files")
    with reporting(record.status):
        if cfg.analysis_level == "participant":
            from vaefusion.workflows.participant import run_participant_level

            run_participant_level(cfg)
        else:
            from vaefusion.workflows.group import run_group_level

            run_group_level(cfg)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Console script ``vaefusion``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--boutiques" in argv:
        from vaefusion.cli.boutiques import descriptor_text

        print(descriptor_text())
        return EXIT_OK
    args = build_parser().parse_args(argv)
    setup_logging(None, args.verbose or 0)
    handlers = set(LOG.handlers)
    record = RunRecord()
    level = str(args.analysis_level)
    with stop_signals():
        try:
            return _main(args, record, level)
        except Interrupted as exc:  # it came while the run was ending: still one clean line
            return finish(record, record.cfg, level, exc.code, f"interrupted by {exc.signame}",
                          interrupted=exc)
        finally:  # this run's log file closes with it (main may be called again in a process)
            if record.status is not None:
                record.status.stop()
            for handler in set(LOG.handlers) - handlers:
                LOG.removeHandler(handler)
                handler.close()


def _main(args, record: RunRecord, level: str) -> int:
    """Build the configuration, run, and end the run with its exit code (see :func:`finish`)."""
    try:
        try:
            record.cfg = build_config(args)
            # only the command line: a reused config file always holds latent_dims
            code = run(record.cfg, latent_dims_given=args.latent_dims is not None,
                       record=record)
        except OSError as exc:  # a full disk in this process is the user's to fix
            full = disk_full_error(exc) or input_read_error(record.cfg, exc)
            if full is None:
                raise
            raise full from None
        return after_success(record, record.cfg, level, code)
    except Interrupted as exc:
        drop_interrupt_crash_files(record.cfg, record.started)
        return finish(record, record.cfg, level, exc.code, f"interrupted by {exc.signame}",
                      interrupted=exc)
    except KeyboardInterrupt:  # SIGINT where no handler could be set (not the main thread)
        return finish(record, record.cfg, level, 130, "interrupted",
                      interrupted=Interrupted(signal.SIGINT))
    except VaefusionError as exc:
        LOG.error("%s", exc.message)
        return finish(record, record.cfg, level, exc.code, exc.message)
    except Exception as exc:  # a bug, not a user error: keep the traceback in a crash file
        return crashed(record, record.cfg, level, exc)


if __name__ == "__main__":
    sys.exit(main())
