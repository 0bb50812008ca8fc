"""SIGINT (Ctrl-C) and SIGTERM stop the whole run: the main process and its workers.

While :func:`stop_signals` is active, either signal raises
:class:`~vaefusion.errors.Interrupted` in the main process (and is remembered in
``Interrupted.pending`` for the workflow callbacks, as nipype turns whatever a node raises into
a failed node). Worker processes forked during the run (MultiProc, data loaders) ignore SIGINT,
which a terminal sends to the whole process group, and end at once on the SIGTERM the main
process sends them when it stops (:func:`vaefusion.workflows.base.run_workflow`).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from vaefusion.errors import Interrupted

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_OWNER_PID: int | None = None  # the process whose run the handlers stop


def _on_signal(signum: int, frame) -> None:
    if os.getpid() != _OWNER_PID:  # a forked worker that kept this handler: just end
        os._exit(128 + signum)
    for sig in _STOP_SIGNALS:  # one interrupt is enough; the cleanup that follows is bounded
        signal.signal(sig, signal.SIG_IGN)
    Interrupted.pending = Interrupted(signum)
    raise Interrupted(signum)


def _worker_signals() -> None:
    """In a worker forked during a run (MultiProc, data loaders): Ctrl-C reaches the whole
    process group, but only the parent acts on it (it stops the workers); SIGTERM, which the
    parent sends to stop a worker, ends it at once."""
    if _OWNER_PID is not None and os.getpid() != _OWNER_PID:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except (ValueError, OSError):  # not the child's main thread: keep what it has
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_worker_signals)


@contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in this process while the block runs."""
    global _OWNER_PID
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    _OWNER_PID = os.getpid()
    Interrupted.pending = None
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    try:
        yield
    finally:
        _OWNER_PID = None
        Interrupted.pending = None
        for sig, handler in previous.items():
            signal.signal(sig, handler)
