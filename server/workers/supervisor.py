"""`vteller serve --workers N`: one worker process per core, restarted when one dies.

Each worker is a complete vteller process on its own port (base port + index) that registers
itself in the shared database (server/workers/registry.py). Invitation links and pages use the
base port; signaling goes to whichever worker hosts the session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

import structlog

from server.settings import Settings

log = structlog.get_logger(__name__)

RESTART_DELAY_SECONDS = 1.0
# A worker that exits with this status (sysexits' EX_CONFIG) refused to start because of how
# the machine is set up (its keys are not the deployment's): starting it again cannot help, so
# every worker is stopped and `vteller serve` exits with it.
EXIT_CONFIG = 78


def run_workers(settings: Settings, count: int) -> int:
    env = dict(os.environ)
    env["VTELLER_HOST"] = settings.host
    # Every worker hands out links to the entry port, whichever worker created them.
    env["VTELLER_PUBLIC_URL"] = settings.origin
    ports = [settings.port + index for index in range(count)]
    workers: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False
    stop_signal = signal.SIGTERM
    signalled: set[int] = set()  # pids: a second signal would cut a worker's shutdown short

    def spawn(port: int) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "server", "serve", "--workers", "1", "--port", str(port)]
        process = subprocess.Popen(command, env=env)
        log.info("worker_started", port=port, pid=process.pid)
        return process

    def stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping, stop_signal
        stopping = True
        stop_signal = signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT
        for process in workers.values():
            pass_on(process)

    def pass_on(process: subprocess.Popen[bytes]) -> None:
        if process.pid not in signalled and process.poll() is None:
            process.send_signal(stop_signal)
            signalled.add(process.pid)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for port in ports:
        workers[port] = spawn(port)
    status = 0
    while not stopping:
        time.sleep(0.5)
        for port, process in list(workers.items()):
            if process.poll() is None or stopping:
                continue
            if process.returncode == EXIT_CONFIG:
                log.error("worker_refused_to_start", port=port, hint="see the error above")
                status = EXIT_CONFIG
                stop(signal.SIGTERM, None)
                break
            log.error("worker_died", port=port, pid=process.pid, status=process.returncode)
            time.sleep(RESTART_DELAY_SECONDS)
            if stopping:
                break  # stopped during the delay: starting a worker now would only orphan it
            workers[port] = spawn(port)
    for process in workers.values():
        # One spawned just as the signal came was not among those the handler passed it to.
        pass_on(process)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    return status
