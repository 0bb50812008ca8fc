"""Shared nipype plumbing: configuration of nipype itself and running a workflow."""

from __future__ import annotations

import logging
from pathlib import Path

from vaefusion.config import Config
from vaefusion.derivatives import naming
from vaefusion.errors import UsageError

LOG = logging.getLogger("vaefusion.workflow")


def configure_nipype(cfg: Config) -> None:
    """Crash files as text in OUTPUT_DIR/logs, timestamp hashing, no version check."""
    from nipype import config as ncfg

    assert cfg.output_dir is not None
    ncfg.update_config({
        "execution": {
            "crashdump_dir": str(naming.logs_dir(cfg.output_dir)),
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
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


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
        if cfg.mem_gb:
            args["memory_gb"] = cfg.mem_gb
        return "MultiProc", args
    return "Linear", {}


def run_workflow(wf, cfg: Config):
    """Run a workflow with the configured plugin; returns the executed graph."""
    plugin, args = plugin_settings(cfg)
    LOG.info("Running %s with the %s plugin", wf.name, plugin)
    return wf.run(plugin=plugin, plugin_args=args)


def node_result(graph, name: str) -> list:
    """Result objects of all executed nodes whose name is ``name`` (one per iterable)."""
    return [n.result for n in graph.nodes() if n.name == name]
