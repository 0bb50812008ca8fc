"""``vaefusion-federated simulate``'s engine: NVFlare's simulator, one client per site, on CPU."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from vaefusion.derivatives import federated as names
from vaefusion.errors import EXIT_FAILURE, VaefusionError
from vaefusion.federated.settings import FederatedSettings
from vaefusion.flare.job import write_job, write_simulator_resources

LOG = logging.getLogger("vaefusion.federated")


def site_names(n: int) -> list[str]:
    return [f"site-{i + 1}" for i in range(n)]


def run_simulation(settings: FederatedSettings, site_dirs: Sequence[Path], out: Path,
                   work: Path, log_config: str = "concise") -> dict:
    """Run the federation in NVFlare's simulator; returns summary.json's content.

    Site ``site-<i>`` reads ``site_dirs[i-1]`` and writes to ``OUT/sites/site-<i>/``; the
    server writes ``OUT/model/`` and ``OUT/summary.json``. A run that stopped raises the
    attributed error the server recorded.
    """
    import json

    from nvflare.private.fed.app.simulator.simulator_runner import SimulatorRunner

    from vaefusion.config import available_cpus

    out, work = Path(out).resolve(), Path(work).resolve()
    # every site runs in its own process on this machine: they split its cores
    threads = max(1, available_cpus() // len(site_dirs))
    sites = {}
    for name, ds in zip(site_names(len(site_dirs)), site_dirs, strict=True):
        root = names.site_root(out, name)
        sites[name] = {"data_dir": str(Path(ds).resolve()),
                       "output_dir": str(names.site_output_dir(root)),
                       "work_dir": str(names.site_work_dir(root)), "threads": threads}
    job = work / "nvflare" / "job"
    workspace = work / "nvflare" / "workspace"
    shutil.rmtree(job, ignore_errors=True)
    write_job(job, {"output_dir": str(out), "work_dir": str(work),
                    "parameters": settings.to_dict(), "sites": list(sites)}, sites)
    write_simulator_resources(workspace)
    for path in (out / names.RUN_ERROR, out / names.NEUROFLAME_ERROR, names.summary_file(out)):
        path.unlink(missing_ok=True)
    LOG.info("NVFlare simulator: %s; workspace %s", ", ".join(
        f"{k} = {v['data_dir']}" for k, v in sites.items()), workspace)
    runner = SimulatorRunner(job_folder=str(job), workspace=str(workspace),
                             clients=",".join(sites), threads=len(sites),
                             log_config=log_config)
    status = runner.run()
    error = names.read_error(out)
    if error is not None:
        raise VaefusionError(error["message"], int(error["code"]))
    summary = names.summary_file(out)
    if status or not summary.is_file():
        raise VaefusionError(f"NVFlare's simulator ended with status {status} before the "
                             f"server wrote {summary}; see the logs in {workspace}.",
                             EXIT_FAILURE)
    return json.loads(summary.read_text())
