"""`vteller serve --workers N` (server/workers/supervisor.py): stopping leaves no worker behind."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from server.settings import Settings
from server.workers import supervisor


def _fake_worker(tmp_path: Path) -> Path:
    """Dies at its first start; later starts run until SIGTERM, which they note."""
    script = tmp_path / "worker.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"if [ ! -e {tmp_path}/started ]; then touch {tmp_path}/started; exit 1; fi\n"
        f"trap 'echo sigterm >> {tmp_path}/stopped; exit 0' TERM\n"
        "while true; do sleep 0.05; done\n"
    )
    script.chmod(0o755)
    return script


def test_a_stop_during_the_restart_delay_starts_no_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned: list[subprocess.Popen[bytes]] = []

    def popen(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, **kwargs)
        spawned.append(process)
        return process

    monkeypatch.setattr(
        supervisor, "sys", types.SimpleNamespace(executable=str(_fake_worker(tmp_path)))
    )
    monkeypatch.setattr(
        supervisor,
        "subprocess",
        types.SimpleNamespace(Popen=popen, TimeoutExpired=subprocess.TimeoutExpired),
    )
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    # The worker dies within the first 0.5 s poll; the operator stops vteller during the 1 s
    # delay before its restart.
    stop = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    stop.start()
    started = time.monotonic()
    try:
        status = supervisor.run_workers(Settings.model_validate({"port": 18590}), 1)
    finally:
        stop.cancel()
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
        for process in spawned:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert status == 0
    assert time.monotonic() - started < 10  # not the 15 s wait for a worker never told to stop
    assert [process.returncode for process in spawned] == [1]
