"""The run's status file, ``OUTPUT_DIR/logs/status.json``, and progress lines for long steps.

One :class:`RunStatus` per run lives in the parent process. It knows the phase (checks,
preprocessing, training, writing outputs ...), the units of work done and in total, the units
running now and, for a VAE fold, its epoch; it rewrites the file atomically on every change, so
a person or a scheduler can ``cat`` it at any time. A heartbeat thread re-reads the epoch
progress that training units write (they may run in other processes: MultiProc, a cluster) and
logs a progress line when a step has been silent for a while, so no long step is silent.

The file ends with the run's outcome: ``state`` ``succeeded``, ``failed`` or ``interrupted``,
the exit code, the one-sentence message and, for a crash, the crash file.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaefusion.disk.io import write_json
from vaefusion.disk.progress import now, read_unit_progress

LOG = logging.getLogger("vaefusion.status")

#: Seconds between re-reads of the running units' epoch progress (a file rewrite only when
#: something changed).
REFRESH_S = 1.0
#: Seconds without a progress line after which the heartbeat logs one.
HEARTBEAT_S = 15.0
#: A unit that took this long gets its own line; quicker ones one line per this many seconds.
QUIET_UNIT_S = 5.0


@dataclass
class _Unit:
    name: str
    started: float
    progress_file: Path | None = None
    progress: dict[str, Any] | None = None


@dataclass
class _State:
    phase: str = "starting"
    phase_started: float = field(default_factory=time.monotonic)
    done: int = 0
    failed: int = 0
    total: int | None = None
    running: dict[str, _Unit] = field(default_factory=dict)


class RunStatus:
    """The status of one run, mirrored to ``path`` (rewritten atomically on each change).

    Thread-safe: the workflow engine's callbacks, the heartbeat thread and the main thread
    all update it. Writing is best effort: a full disk must not turn into a second error while
    the first is being reported.
    """

    def __init__(self, path: Path, level: str, log_file: Path | None = None,
                 heartbeat_s: float = HEARTBEAT_S, refresh_s: float = REFRESH_S) -> None:
        self.path = Path(path)
        self.level = level
        self.log_file = log_file
        self.heartbeat_s = heartbeat_s
        self.refresh_s = refresh_s
        self.started = now()
        self._t0 = time.monotonic()
        self._state = _State()
        self._outcome: dict[str, Any] | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_line = time.monotonic()
        self._halted = False
        self._notes: dict[str, Any] = {}

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> RunStatus:
        """Write the file and start the heartbeat thread."""
        self._write()
        self._thread = threading.Thread(target=self._beat, name="vaefusion-status",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ----------------------------------------------------------------- updates
    def phase(self, name: str, total: int | None = None) -> None:
        """Enter a phase; ``total`` units of work are expected in it (None: not counted)."""
        with self._lock:
            self._state = _State(phase=name, total=total)
            self._last_line = time.monotonic()
        self._write()

    def unit_started(self, name: str, progress_file: Path | None = None) -> None:
        with self._lock:
            self._state.running[name] = _Unit(name, time.monotonic(), progress_file)
        self._write()

    def unit_finished(self, name: str, ok: bool = True) -> None:
        """A unit ended (``ok``: successfully); logs a progress line ``[k/N]`` for a slow
        unit, a failed one, the last one, and otherwise at most every few seconds."""
        with self._lock:
            if self._halted:
                return
            st = self._state
            unit = st.running.pop(name, None)
            if ok:
                st.done += 1
            else:
                st.failed += 1
            seconds = time.monotonic() - unit.started if unit else 0.0
            ended = st.done + st.failed
            now = time.monotonic()
            log = (not ok or seconds >= QUIET_UNIT_S or now - self._last_line >= QUIET_UNIT_S
                   or st.total is None or ended >= st.total or st.total <= 12)
            if log:
                self._last_line = now
        if log:
            count = f"{ended}/{st.total}" if st.total else str(ended)
            (LOG.warning if not ok else LOG.info)("[%s] %s: %s %s (%.0f s)", count, st.phase,
                                                  name, "done" if ok else "failed", seconds)
        self._write()

    def note(self, key: str, value: Any) -> None:
        """A run-wide fact for the file (e.g. ``gpus``: the GPUs the units are spread over)."""
        with self._lock:
            self._notes[key] = value
        self._write()

    def halt(self) -> None:
        """Stop counting units (an interrupt: the engine's callbacks no longer mean success)."""
        with self._lock:
            self._halted = True

    def finish(self, code: int, state: str, message: str | None = None,
               crash_file: Path | None = None) -> None:
        """The outcome: ``state`` is succeeded, failed or interrupted."""
        with self._lock:
            self._outcome = {"state": state, "exit_code": int(code), "message": message,
                             "crash_file": str(crash_file) if crash_file else None,
                             "finished": now()}
        self.stop()
        self._write()

    # ----------------------------------------------------------------- reading
    def snapshot(self) -> dict[str, Any]:
        """The status as written to the file."""
        with self._lock:
            st = self._state
            running = []
            for unit in st.running.values():
                item: dict[str, Any] = {"unit": unit.name,
                                        "seconds": round(time.monotonic() - unit.started, 1)}
                if unit.progress:
                    item["epoch"] = unit.progress.get("epoch")
                    item["epochs"] = unit.progress.get("epochs")
                    if "gpu" in unit.progress:
                        item["gpu"] = unit.progress["gpu"]
                running.append(item)
            data: dict[str, Any] = {
                "state": "running", "level": self.level, "phase": st.phase,
                "units_done": st.done, "units_failed": st.failed, "units_total": st.total,
                "running": running, "pid": os.getpid(), "host": socket.gethostname(),
                "started": self.started, "updated": now(),
                "elapsed_s": round(time.monotonic() - self._t0, 1),
                "log_file": str(self.log_file) if self.log_file else None,
                "exit_code": None,
            }
            data.update(self._notes)
            if self._outcome is not None:
                data.update(self._outcome)
            return data

    def progress_line(self) -> str:
        """One line: the phase, units done, and what is running (with epochs)."""
        snap = self.snapshot()
        parts = [f"{snap['phase']}"]
        if snap["units_total"]:
            parts.append(f"{snap['units_done']}/{snap['units_total']} done")
        for item in snap["running"]:
            epoch = (f", epoch {item['epoch']}/{item['epochs']}"
                     if item.get("epoch") is not None else "")
            parts.append(f"{item['unit']} running ({item['seconds']:.0f} s{epoch})")
        return "; ".join(parts)

    # ----------------------------------------------------------------- internals
    def _write(self) -> None:
        try:
            write_json(self.path, self.snapshot())
        except OSError as exc:  # best effort: never the reason a run fails
            LOG.debug("cannot write %s (%s)", self.path, exc)

    def _refresh(self) -> bool:
        """Re-read the running units' progress files; whether anything changed."""
        changed = False
        with self._lock:
            units = list(self._state.running.values())
        for unit in units:
            progress = read_unit_progress(unit.progress_file)
            if progress and "gpu" in progress and "gpu" not in (unit.progress or {}):
                LOG.info("%s runs on GPU %s", unit.name, progress["gpu"])
            if progress and (unit.progress or {}).get("epoch") != progress.get("epoch"):
                unit.progress = progress
                changed = True
        return changed

    def _beat(self) -> None:
        while not self._stop.wait(self.refresh_s):
            if self._refresh():
                self._write()
            if time.monotonic() - self._last_line >= self.heartbeat_s:
                self._last_line = time.monotonic()
                LOG.info("still working: %s", self.progress_line())
                self._write()
