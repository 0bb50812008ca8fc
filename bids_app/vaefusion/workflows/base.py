"""Shared nipype plumbing: configuration of nipype itself and running a workflow.

:func:`run_workflow` runs a workflow with the configured plugin and turns the ways it can
end into the run's outcome: a node's user-facing error (a record left by
:func:`vaefusion.interfaces.errors.reported_errors`) becomes that error and its exit code, a
full disk exit 73, any other node failure a :class:`NodeCrash` naming nipype's crash file; an
interrupt (Ctrl-C, SIGTERM) stops the worker processes before it propagates. While it runs,
the nodes that are units of work (a subject's preprocessing, a VAE fold, a PCA baseline)
report to the run's :class:`~vaefusion.workflows.status.RunStatus`, if one is active
(:func:`reporting`).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vaefusion.config import Config
from vaefusion.disk import naming
from vaefusion.errors import OutputError, UsageError, VaefusionError, disk_full_error
from vaefusion.workflows.progress import RunNodes, count_units, status_callback, subject_labels
from vaefusion.workflows.status import RunStatus

LOG = logging.getLogger("vaefusion.workflow")

#: Below this much free space on the work or output disk, a failed node is put down to a full
#: disk (a full disk may refuse even the node's error record).
MIN_FREE_BYTES = 16 * 2**20

_STATUS: RunStatus | None = None


class NodeCrash(Exception):
    """A workflow node failed with a bug (not a user error); nipype wrote its crash file(s)."""

    def __init__(self, summary: str, crash_files: list[Path]) -> None:
        super().__init__(summary)
        self.summary = summary
        self.crash_files = crash_files


@contextmanager
def reporting(status: RunStatus | None) -> Iterator[None]:
    """Make ``status`` the run's status for the workflows run inside the block."""
    global _STATUS
    previous, _STATUS = _STATUS, status
    try:
        yield
    finally:
        _STATUS = previous


def configure_nipype(cfg: Config) -> None:
    """Crash files as text in the run's own crash folder (``logs/crash-<run id>/``),
    timestamp hashing, no version check."""
    from nipype import config as ncfg

    assert cfg.output_dir is not None
    ncfg.update_config({
        "execution": {
            "crashdump_dir": str(naming.crash_dir(cfg.output_dir, cfg.run_id)),
            "crashfile_format": "txt",
            "hash_method": "timestamp",
            "stop_on_first_crash": cfg.stop_on_first_crash,
            "remove_unnecessary_outputs": False,
            "parameterize_dirs": False,  # short, hashed folder names in the work dir
            # nipype's 2 s default poll dominated MultiProc runs of many short nodes
            "poll_sleep_duration": 0.05,
        },
        "monitoring": {"enabled": False},
        "logging": {"workflow_level": "WARNING", "interface_level": "WARNING"},
    })
    for name in ("nipype.interface", "nipype.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # nipype logs a node's failure with its whole traceback (once per node); run_workflow
    # reports it in one line that names the crash file, which keeps the traceback
    logging.getLogger("nipype.workflow").setLevel(logging.CRITICAL)


def plugin_settings(cfg: Config) -> tuple[str, dict]:
    """The nipype plugin and its arguments: ``--use-plugin`` YAML, else MultiProc/Linear."""
    if cfg.use_plugin is not None:
        import yaml

        try:
            data = yaml.safe_load(Path(cfg.use_plugin).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"--use-plugin {cfg.use_plugin} cannot be read ({exc}); give a "
                             f"nipype plugin YAML with 'plugin' and 'plugin_args'.") from None
        if "plugin" not in data:
            raise UsageError(f"--use-plugin {cfg.use_plugin} has no 'plugin' key; add one "
                             f"(e.g. plugin: SLURM).")
        return str(data["plugin"]), dict(data.get("plugin_args") or {})
    if cfg.nprocs > 1:
        args: dict = {"n_procs": cfg.nprocs, "raise_insufficient": False}
        if cfg.device == "cuda":  # a forked worker cannot use CUDA once the parent has
            args["mp_context"] = "forkserver"
        if cfg.mem_gb:
            args["memory_gb"] = cfg.mem_gb
        return "MultiProc", args
    return "Linear", {}


def run_workflow(wf, cfg: Config):
    """Run a workflow with the configured plugin; returns the executed graph.

    Raises the first node's user-facing error (with its exit code), an ``OutputError`` for a
    full disk, or :class:`NodeCrash` for a bug in a node (see the module docstring).
    """
    plugin, args = plugin_settings(cfg)
    status = _STATUS
    during, after = PHASES.get(wf.name, (wf.name, f"{wf.name} done"))
    if status is not None:
        status.phase(during, total=count_units(wf))
        if cfg.device == "cuda":
            status.note("gpus", cfg.runtime().gpus)
    nodes: RunNodes | None = None
    if not plugin.endswith("Graph"):  # nipype's graph plugins take no callback
        assert cfg.work_dir is not None
        nodes = RunNodes()
        args = {**args, "status_callback": status_callback(
            status, Path(cfg.work_dir) / naming.TRAINING_DIR, subject_labels(wf), nodes)}
    LOG.info("Running %s with the %s plugin", wf.name, plugin)
    runner = _runner(plugin, args)
    start = time.time()
    try:
        graph = wf.run(plugin=runner, plugin_args=args)
    except Exception as exc:
        raise _failure(wf, cfg, start, exc, nodes) from None
    except BaseException:  # Ctrl-C or SIGTERM: stop the workers before the run ends
        _stop_workers(runner)
        raise
    # MultiProc counts a failed node that ran in this process (the derivatives sink) as done
    late = _failure(wf, cfg, start, None, nodes)
    if late is not None:
        raise late
    if status is not None:
        status.phase(after)
    LOG.info("%s done; %s", during.capitalize(), after)
    return graph


#: The phase of the run while each workflow runs, and the one that follows it.
PHASES = {"vaefusion_participant_wf": ("preprocessing", "collecting the preprocessed subjects"),
          "vaefusion_group_wf": ("cross-validation", "writing the group outputs (tables, "
                                 "models, latents, figures, report)")}


def _runner(plugin: str, args: dict):
    """The plugin object for MultiProc (so that an interrupt can stop its workers), else the
    plugin's name."""
    if plugin != "MultiProc":
        return plugin
    from nipype.pipeline.plugins import MultiProcPlugin

    return MultiProcPlugin(plugin_args=args)


def _stop_workers(runner) -> None:
    """Terminate a MultiProc pool's worker processes now (SIGTERM, then SIGKILL)."""
    pool = getattr(runner, "pool", None)
    if pool is None:
        return
    # the running futures' callbacks will see a broken pool: expected now, not worth a traceback
    logging.getLogger("concurrent.futures").setLevel(logging.CRITICAL)
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + 5
    for proc in procs:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=1)


def _failure(wf, cfg: Config, start: float, exc: Exception | None,
             nodes: RunNodes | None = None) -> Exception | None:
    """The error a failed workflow run ends with (see :func:`run_workflow`); with ``exc``
    None (nipype reported success), an error only if a node left a record or a crash file.

    ``nodes`` (when the plugin reports them) limits the records to this run's nodes, and its
    failed units name what crashed (``sub-03``, a fold)."""
    from vaefusion.interfaces.errors import node_errors

    records = node_errors(Path(wf.base_dir) / wf.name, start)
    if nodes is not None:  # concurrent runs may share the work dir: only this run's nodes
        records = [r for r in records if r.path.parent in nodes.folders]
    failed = f" for {', '.join(dict.fromkeys(nodes.failed))}" if nodes and nodes.failed else ""
    if records:
        first = records[0]
        more = (f" ({len(records) - 1} more unit(s) failed; see the log)"
                if len(records) > 1 else "")
        for record in records[1:]:
            LOG.error("also failed: %s", record.message)
        return VaefusionError(first.message + more, first.code)
    if exc is None:
        crashes = crash_files(cfg, start)
        return NodeCrash(f"a step of {wf.name} failed{failed}", crashes) if crashes else None
    if isinstance(exc, VaefusionError):  # the Linear plugin re-raises a node's own error
        return exc
    full = disk_full_error(exc)
    if full is not None:
        return full
    for folder in (cfg.work_dir, cfg.output_dir):
        if folder is not None and Path(folder).exists():
            free = shutil.disk_usage(folder).free
            if free < MIN_FREE_BYTES:
                return OutputError(f"The disk holding {folder} is full ({free // 2**20} MiB "
                                   f"free); free space or give another OUTPUT_DIR or -w, then "
                                   f"rerun the same command (finished work is reused).")
    crashes = crash_files(cfg, start)
    return NodeCrash(f"a step of {wf.name} failed{failed} ({_last_line(exc)[:300]})", crashes)


def _last_line(exc: Exception) -> str:
    """The gist of a node's failure: the last line of the traceback nipype passes on (a list
    of lines, or text), or the exception itself."""
    text = exc.args[0] if exc.args else ""
    if isinstance(text, (list, tuple)):
        text = "".join(map(str, text))
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if "Traceback" in str(text) and lines:
        return lines[-1]
    return f"{type(exc).__name__}: {exc}"


def crash_files(cfg: Config, since: float) -> list[Path]:
    """This run's crash files (nipype's and ours, in ``logs/crash-<run id>/``) written at or
    after ``since``: a concurrent run's crash on the same OUTPUT_DIR is not this run's."""
    if cfg.output_dir is None:
        return []
    folder = naming.crash_dir(cfg.output_dir, cfg.run_id)
    found = []
    for path in folder.glob(naming.CRASH_PATTERN) if folder.is_dir() else []:
        try:
            if path.stat().st_mtime >= since:
                found.append(path)
        except OSError:
            continue
    return sorted(found, key=lambda p: p.stat().st_mtime)


def node_result(graph, name: str) -> list:
    """Result objects of all executed nodes whose name is ``name`` (one per iterable)."""
    return [n.result for n in graph.nodes() if n.name == name]
