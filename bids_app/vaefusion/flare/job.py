"""NVFlare job folders and simulator workspaces for vaefusion's federated run.

The same two component configurations serve the local simulation (explicit paths per site)
and NeuroFLAME (``platforms/neuroflame/app/config/``: the container paths ``/workspace/data``,
``/workspace/output`` and ``/workspace/runKit/parameters.json``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vaefusion.disk.io import write_json
from vaefusion.federated.messages import TASKS

CONTROLLER = "vaefusion.flare.controller.VaefusionController"
EXECUTOR = "vaefusion.flare.executor.VaefusionExecutor"
#: NVFlare 2.8 builds only components whose class path starts with an allowed prefix.
CLASS_ALLOW_LIST = ["nvflare.", "vaefusion.flare."]
JOB_NAME = "vaefusion"
SERVER_APP = "app_server"

#: NeuroFLAME's container contract.
NEUROFLAME_DATA = "/workspace/data"
NEUROFLAME_OUTPUT = "/workspace/output"
NEUROFLAME_PARAMETERS = "/workspace/runKit/parameters.json"


def server_config(controller_args: Mapping[str, Any]) -> dict[str, Any]:
    """``config_fed_server.json``: the vaefusion workflow; tasks are polled every 50 ms (the
    default 2 s would add seconds to each of the run's many short evaluation rounds)."""
    return {
        "format_version": 2,
        "server": {"heart_beat_timeout": 600, "task_request_interval": 0.05},
        "task_data_filters": [],
        "task_result_filters": [],
        "components": [],
        "workflows": [{"id": "vaefusion", "path": CONTROLLER, "args": dict(controller_args)}],
    }


def client_config(executor_args: Mapping[str, Any]) -> dict[str, Any]:
    """``config_fed_client.json``: one executor for every vaefusion task."""
    return {
        "format_version": 2,
        "default_task_fetch_interval": 0.1,
        "executors": [{"tasks": list(TASKS),
                       "executor": {"path": EXECUTOR, "args": dict(executor_args)}}],
        "task_result_filters": [],
        "task_data_filters": [],
        "components": [],
    }


def neuroflame_configs() -> tuple[dict[str, Any], dict[str, Any]]:
    """The server and client configurations of the NeuroFLAME computation."""
    server = server_config({"output_dir": NEUROFLAME_OUTPUT,
                            "parameters_file": NEUROFLAME_PARAMETERS})
    client = client_config({"data_dir": NEUROFLAME_DATA, "output_dir": NEUROFLAME_OUTPUT})
    return server, client


def write_job(job_dir: Path, controller_args: Mapping[str, Any],
              sites: Mapping[str, Mapping[str, Any]]) -> Path:
    """A job folder with one server app and one app per site (its own executor arguments)."""
    job_dir = Path(job_dir)
    write_json(job_dir / SERVER_APP / "config" / "config_fed_server.json",
               server_config(controller_args))
    deploy = {SERVER_APP: ["server"]}
    for site, args in sites.items():
        write_json(job_dir / f"app_{site}" / "config" / "config_fed_client.json",
                   client_config(args))
        deploy[f"app_{site}"] = [site]
    write_json(job_dir / "meta.json", {"name": JOB_NAME, "resource_spec": {},
                                       "min_clients": len(sites), "deploy_map": deploy})
    return job_dir


def write_simulator_resources(workspace: Path) -> Path:
    """The simulator workspace's ``local/resources.json`` allowing vaefusion's components."""
    path = Path(workspace) / "local" / "resources.json"
    data: dict[str, Any] = {"format_version": 2}
    if path.is_file():
        data = json.loads(path.read_text())
    allow = data.setdefault("class_allow_list", [])
    allow.extend(p for p in CLASS_ALLOW_LIST if p not in allow)
    return write_json(path, data)
