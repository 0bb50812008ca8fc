"""A federation inside one process: the sites are objects, the messages still bytes.

:class:`InProcessTransport` encodes every request and reply with
:mod:`vaefusion.federated.codec` and decodes it on the other side, exactly the bytes NVFlare
carries, so that tests and benchmarks see what would cross the network (``recorder`` gets every
message) and count its size. A site whose ``handle`` raises counts as dropped out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vaefusion.errors import EXIT_FAILURE
from vaefusion.federated import codec
from vaefusion.federated.messages import SiteFailure
from vaefusion.federated.server import Coordinator, FederatedResult, Traffic
from vaefusion.federated.settings import FederatedSettings

LOG = logging.getLogger("vaefusion.federated")


class Site(Protocol):
    def handle(self, task: str, request: object) -> object: ...


@dataclass(frozen=True)
class Sent:
    """One message as it crossed the (simulated) network."""

    task: str
    sender: str  # "server" or the site's name
    receiver: str
    message: object  # as decoded by the receiver
    n_bytes: int


class InProcessTransport:
    """Calls :meth:`Site.handle` of each site, through the codec, in site order."""

    def __init__(self, sites: Mapping[str, Site],
                 recorder: Callable[[Sent], None] | None = None) -> None:
        self.sites = dict(sites)
        self.recorder = recorder
        self.traffic = Traffic()

    def _carry(self, task: str, sender: str, receiver: str, msg: object
               ) -> tuple[object, int]:
        # a site may answer with bytes as they came off the network (a remote site)
        data = msg if isinstance(msg, bytes) else codec.join(codec.split(codec.encode(msg)))
        decoded = codec.decode(data)
        if self.recorder is not None:
            self.recorder(Sent(task, sender, receiver, decoded, len(data)))
        return decoded, len(data)

    def broadcast(self, task: str, request: object, sites: Sequence[str]) -> dict[str, object]:
        replies: dict[str, object] = {}
        for name in sites:
            received, n = self._carry(task, "server", name, request)
            self.traffic.sent += n
            try:
                reply = self.sites[name].handle(task, received)
            except Exception as exc:  # the site's process is gone: no answer
                LOG.warning("site %s did not answer %s (%s)", name, task, exc)
                replies[name] = SiteFailure(name, task, f"no reply ({exc})", EXIT_FAILURE,
                                            dropped=True)
                continue
            try:
                replies[name], n = self._carry(task, name, "server", reply)
            except codec.CodecError as exc:  # as the NVFlare transport: that site is excluded
                replies[name], n = SiteFailure(name, task, f"sent an unreadable message "
                                               f"({exc})"), 0
            self.traffic.received += n
        return replies


def run_in_process(settings: FederatedSettings, sites: Mapping[str, Site], output_dir: Path,
                   work_dir: Path | None = None,
                   recorder: Callable[[Sent], None] | None = None) -> FederatedResult:
    """A whole federated run in this process (the server and every site)."""
    transport = InProcessTransport(sites, recorder)
    return Coordinator(settings, list(sites), output_dir, work_dir).run(transport)
