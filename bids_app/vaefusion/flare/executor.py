"""The site side on NVFlare: an executor that answers with a SiteRunner."""

from __future__ import annotations

import logging
from pathlib import Path

from nvflare.apis.executor import Executor
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal

from vaefusion.derivatives import federated as names
from vaefusion.disk.naming import logs_dir
from vaefusion.federated.codec import CodecError
from vaefusion.federated.messages import SiteFailure
from vaefusion.federated.site import SiteRunner
from vaefusion.flare.wire import pack, unpack


class VaefusionExecutor(Executor):
    """One site: ``data_dir`` is its BIDS dataset (read only), ``output_dir`` its own outputs
    (participant-level derivatives, the final model and summary, logs, errors), ``work_dir``
    the cache and the resumable training state (default ``output_dir/work``), ``threads`` the
    site's torch threads (0: every CPU; the simulator splits the machine's cores)."""

    def __init__(self, data_dir: str, output_dir: str, work_dir: str = "",
                 threads: int = 0) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.output_dir = Path(output_dir)
        self.work_dir = Path(work_dir) if work_dir else self.output_dir / names.WORK
        self.threads = int(threads)
        self.runner: SiteRunner | None = None

    def _site(self, fl_ctx: FLContext) -> SiteRunner:
        if self.runner is None:
            site = fl_ctx.get_identity_name()
            folder = logs_dir(self.output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (self.output_dir / names.NEUROFLAME_ERROR).unlink(missing_ok=True)
            handler = logging.FileHandler(folder / names.LOG)
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s [%(levelname)s] "
                                                   "%(message)s"))
            vlog = logging.getLogger("vaefusion")
            vlog.addHandler(handler)
            vlog.setLevel(logging.INFO)
            self.runner = SiteRunner(site, self.data_dir, self.output_dir, self.work_dir,
                                     threads=self.threads)
        return self.runner

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext,
                abort_signal: Signal) -> Shareable:
        site = self._site(fl_ctx)
        try:
            request, _ = unpack(shareable)
            reply = (site.handle(task_name, request) if request is not None else
                     SiteFailure(site.site, task_name, "got a task without a vaefusion message"))
        except CodecError as exc:
            reply = SiteFailure(site.site, task_name, f"got an unreadable request ({exc})")
        if isinstance(reply, SiteFailure):
            names.write_error(self.output_dir, reply.reason, reply.code, origin="site",
                              scope=f"site task {task_name}", stage="task_execution")
        out, _ = pack(reply)
        return out
