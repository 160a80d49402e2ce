"""Service instances as real processes (``python -m fulfill serve``).

For crash and multi-process tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from tests.servers import free_port


@dataclass
class Instance:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup, as when a host dies."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_instance(
    env: dict[str, str], log: Path, *, workers: int = 1, port: int | None = None
) -> Instance:
    """Start ``serve`` and wait until it is ready; ``port`` to come back where a killed one was."""
    port = port or free_port()
    handle: IO[bytes] = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "fulfill", "serve", "--port", str(port), "--workers", str(workers)],
        env={
            **os.environ,
            # Emails go to the test's folder, never the checkout's var/outbox.
            "FULFILL_MAIL_OUTBOX": str(log.parent / "outbox"),
            **env,
            "FULFILL_PUBLIC_URL": f"http://127.0.0.1:{port}",
        },
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    handle.close()
    instance = Instance(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"instance exited: {instance.output()}")
        try:
            if httpx.get(f"{instance.url}/readyz", timeout=1).status_code == 200:
                return instance
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    instance.stop()
    raise RuntimeError(f"instance did not become ready: {instance.output()}")


@contextmanager
def instances(
    env: dict[str, str], folder: Path, count: int, overrides: Sequence[dict[str, str]] = ()
) -> Iterator[list[Instance]]:
    """``count`` instances of ``env``; the n-th with ``overrides[n]`` on top, if given."""
    started: list[Instance] = []
    try:
        for n in range(count):
            own = overrides[n] if n < len(overrides) else {}
            started.append(start_instance({**env, **own}, folder / f"instance{n}.log"))
        yield started
    finally:
        for instance in started:
            instance.stop()
