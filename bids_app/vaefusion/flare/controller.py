"""The server side on NVFlare: a workflow that runs the federated Coordinator."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from nvflare.apis.client import Client
from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.fl_context import FLContext
from nvflare.apis.impl.controller import Controller
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal

from vaefusion.derivatives import federated as names
from vaefusion.errors import EXIT_FAILURE, VaefusionError
from vaefusion.federated.codec import CodecError
from vaefusion.federated.messages import SiteFailure
from vaefusion.federated.server import Coordinator, FederationError, Traffic
from vaefusion.federated.settings import FederatedSettings
from vaefusion.flare.wire import pack, unpack


class FlareTransport:
    """:class:`~vaefusion.federated.server.Transport` over NVFlare's ``broadcast_and_wait``."""

    def __init__(self, controller: Controller, fl_ctx: FLContext, abort_signal: Signal,
                 timeout: float = 0.0) -> None:
        self.controller = controller
        self.fl_ctx = fl_ctx
        self.abort_signal = abort_signal
        self.timeout = int(math.ceil(timeout))
        self.traffic = Traffic()

    def broadcast(self, task: str, request: object, sites: Sequence[str]) -> dict[str, object]:
        data, size = pack(request)
        results: dict[str, Shareable] = {}

        def received(client_task: ClientTask, fl_ctx: FLContext) -> None:
            results[client_task.client.name] = client_task.result

        nv_task = Task(name=task, data=data, timeout=self.timeout, result_received_cb=received)
        self.controller.broadcast_and_wait(
            task=nv_task, fl_ctx=self.fl_ctx, targets=list(sites), min_responses=len(sites),
            wait_time_after_min_received=0, abort_signal=self.abort_signal)
        if self.abort_signal.triggered:
            raise FederationError("the federated run was aborted.", EXIT_FAILURE)
        self.traffic.sent += size * len(sites)
        replies: dict[str, object] = {}
        for site, result in results.items():
            try:
                msg, n = unpack(result)
            except CodecError as exc:
                msg, n = SiteFailure(site, task, f"sent an unreadable message ({exc})"), 0
            if msg is None:
                msg = SiteFailure(site, task, f"its task ended with NVFlare return code "
                                  f"{result.get_return_code()}", dropped=True)
            self.traffic.received += n
            replies[site] = msg
        return replies


class VaefusionController(Controller):
    """Runs the whole federated protocol; writes ``output_dir/model`` and ``summary.json``.

    Settings come from ``parameters`` (a dict, as ``vaefusion-federated simulate`` writes it)
    or from ``parameters_file`` (NeuroFLAME's ``/workspace/runKit/parameters.json``). A run
    that stops writes ``error.json`` and ``.neuroflame_error.json`` to ``output_dir`` with the
    attributed reason, then ends the job as failed.
    """

    def __init__(self, output_dir: str, work_dir: str = "", parameters: dict | None = None,
                 parameters_file: str = "", sites: list[str] | None = None,
                 task_check_period: float = 0.05) -> None:
        super().__init__(task_check_period=task_check_period)
        self.output_dir = Path(output_dir)
        self.work_dir = Path(work_dir) if work_dir else self.output_dir / names.WORK
        self.parameters = parameters
        self.parameters_file = parameters_file
        self.site_names = list(sites or [])

    def start_controller(self, fl_ctx: FLContext) -> None:
        for path in (self.output_dir / names.RUN_ERROR, self.output_dir / names.NEUROFLAME_ERROR):
            path.unlink(missing_ok=True)

    def stop_controller(self, fl_ctx: FLContext) -> None:
        pass

    def process_result_of_unknown_task(self, client: Client, task_name: str,
                                       client_task_id: str, result: Shareable,
                                       fl_ctx: FLContext) -> None:
        pass  # a late reply of a site already counted as dropped

    def _settings(self) -> FederatedSettings:
        if self.parameters is not None:
            return FederatedSettings.from_dict(self.parameters, "the job's parameters")
        return FederatedSettings.from_file(Path(self.parameters_file))

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        try:
            settings = self._settings()
            sites = self.site_names or sorted(c.name for c in self._engine.get_clients())
            coordinator = Coordinator(settings, sites, self.output_dir, self.work_dir,
                                      self.logger)
            coordinator.run(FlareTransport(self, fl_ctx, abort_signal, settings.round_timeout))
        except VaefusionError as exc:
            names.write_error(self.output_dir, exc.message, exc.code,
                              error_type=type(exc).__name__, stage="execution")
            self.logger.error("%s", exc.message)
            self.system_panic(exc.message, fl_ctx)
        except Exception as exc:  # a bug: the traceback goes to the server's log
            self.logger.exception("vaefusion's federated server crashed")
            names.write_error(self.output_dir, f"the server crashed ({type(exc).__name__}: "
                              f"{exc}); see the server log", EXIT_FAILURE,
                              error_type=type(exc).__name__, stage="execution")
            self.system_panic(f"vaefusion server crashed: {type(exc).__name__}", fl_ctx)
