"""``sensevoice serve`` as a supervisor: this process binds the port and keeps one serving process on it.

A serving process that dies (killed, crashed, taken by the kernel's OOM killer) is replaced at once; the
listening socket stays open here meanwhile, so connections made in between wait in its backlog instead of
being refused. SIGTERM/SIGINT close the socket and pass the signal on: the serving process drains (in-flight
requests finish) and the supervisor exits 0. A model that fails to load ends it all with 1, without a
restart loop. The serving process holds the read end of a pipe whose write end only the supervisor has: it
drains and exits when that pipe closes, so it never outlives its supervisor, however that one ended.
Each serving process gets a temp directory of its own (its TMPDIR), removed once it has ended: a process
killed in the middle of uploads leaves their files there, which nothing else would ever remove.

This module stays light: the supervisor never imports torch or the app.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from types import FrameType

from ..settings import Settings
from . import EXIT_LOAD_FAILED, EXIT_OK

logger = logging.getLogger(__name__)

# uvicorn exits with this when its app fails to start: a restart would fail the same way.
UVICORN_STARTUP_FAILURE = 3
# A serving process that dies sooner than this after its start counts as a quick death: the first is
# replaced at once, the next ones after a delay that doubles up to MAX_RESTART_DELAY.
QUICK_DEATH_SECONDS = 30.0
MAX_RESTART_DELAY = 30.0


def supervise(settings: Settings) -> int:
    import uvicorn

    logging.getLogger("sensevoice_serve").setLevel(logging.INFO)  # restarts are the operator's business

    # Bound the way uvicorn binds it (IPv6 hosts, SO_REUSEADDR, its "running on" line, exit 3 when taken).
    config = uvicorn.Config("sensevoice_serve", host=settings.host, port=settings.port)
    listener = config.bind_socket()
    listener.listen(config.backlog)
    return Supervisor(settings, listener).run()


class Supervisor:
    def __init__(self, settings: Settings, listener: socket.socket) -> None:
        self.listener = listener
        self.environment = {**os.environ, **settings_environment(settings)}
        self.child: subprocess.Popen | None = None
        self.stopping = False

    def run(self) -> int:
        # The serving process gets the read end; the write end stays open, unused, until this process ends.
        lifeline, _lifeline_end = os.pipe()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        code, quick_deaths = EXIT_OK, 0
        while not self.stopping:
            started = time.monotonic()
            temp_dir = tempfile.mkdtemp(prefix="sensevoice-serve-")
            try:
                self.child = self._start(lifeline, temp_dir)
                code = self.child.wait()
            finally:
                shutil.rmtree(temp_dir, ignore_errors=True)
            if self.stopping:
                break
            if code in (EXIT_LOAD_FAILED, UVICORN_STARTUP_FAILURE):
                logger.error("the serving process could not start (exit code %d); stopping", code)
                return EXIT_LOAD_FAILED
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < QUICK_DEATH_SECONDS else 0
            delay = 0.0 if quick_deaths <= 1 else min(MAX_RESTART_DELAY, 2.0 ** (quick_deaths - 2))
            logger.error(
                "the serving process [%d] %s; starting another in %.0f s", self.child.pid, _how(code), delay
            )
            self._pause(delay)
        return EXIT_LOAD_FAILED if code == EXIT_LOAD_FAILED else EXIT_OK

    def _start(self, lifeline: int, temp_dir: str) -> subprocess.Popen:
        fd = self.listener.fileno()
        command = [sys.executable, "-m", "sensevoice_serve.cli", "serve"]
        command += ["--listen-fd", str(fd), "--lifeline-fd", str(lifeline)]
        environment = {**self.environment, "TMPDIR": temp_dir}
        # Its own process group: a terminal's Ctrl-C reaches the supervisor only, which passes it on once.
        child = subprocess.Popen(command, env=environment, pass_fds=(fd, lifeline), process_group=0)
        logger.info("started serving process [%d]", child.pid)
        if self.stopping:  # a signal came while it started
            child.send_signal(signal.SIGTERM)
        return child

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        if not self.stopping:
            self.stopping = True
            # Refused from now on; the serving process closes its own copy as it starts draining.
            self.listener.close()
        if self.child is not None:
            # Passed on as it came: a second Ctrl-C still cuts a drain short.
            self.child.send_signal(sig)

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.1)


def settings_environment(settings: Settings) -> dict[str, str]:
    """The settings as the serving process reads them: SENSEVOICE_* variables (flags included)."""
    values = settings.model_dump()
    return {f"SENSEVOICE_{name.upper()}": str(value) for name, value in values.items() if value is not None}


def exit_with_supervisor(lifeline: int) -> None:
    """In the serving process: drain and exit (SIGTERM) once the supervisor's end of the pipe closes."""

    def watch() -> None:
        while os.read(lifeline, 1):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-lifeline", daemon=True).start()


def _how(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
