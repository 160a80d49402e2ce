"""The processes under test: the emulator, the ceiling app, the service, its peer; their cost.

Each runs as its own process on loopback (``python -m …``), logs to a file
under the bench folder, and is stopped with SIGTERM. CPU time and peak RSS
are read from ``/proc`` (psutil is not a dependency): ``VmHWM`` is the
resident set's high-water mark, ``utime + stime`` the CPU time; both are
summed over a process's children too (``serve --workers N`` forks, and so
does gunicorn, which runs the guide's peer).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.servers import free_port

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The project these processes run: ``bench`` and ``fulfill`` import from here,
# whatever folder they run in.
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Process:
    """A server process of the bench, and where its log goes."""

    name: str
    url: str
    popen: subprocess.Popen[bytes]
    log: Path
    # SIGINT under pyinstrument: uvicorn re-raises the signal it stopped on,
    # and only a KeyboardInterrupt lets pyinstrument save its samples.
    stop_signal: int = signal.SIGTERM

    def family(self) -> list[int]:
        """This process and its descendants (uvicorn's workers)."""
        pids = [self.popen.pid]
        for pid in pids:
            children = Path(f"/proc/{pid}/task/{pid}/children")
            try:
                pids += [int(c) for c in children.read_text().split()]
            except OSError:
                continue
        return pids

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the process and its live descendants."""
        total = 0
        for pid in self.family():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        return total / CLOCK_TICKS

    def peak_rss_mb(self) -> dict[int, float]:
        """Peak resident set (VmHWM) of each process of the family, in MiB."""
        peaks: dict[int, float] = {}
        for pid in self.family():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks[pid] = int(line.split()[1]) / 1024
        return peaks

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(self.stop_signal)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start(
    name: str,
    args: Sequence[str],
    *,
    folder: Path,
    ready_path: str,
    port: int,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    ready_status: int = 200,
) -> Process:
    """Run ``python ARGS`` and wait until ``GET ready_path`` answers ``ready_status``."""
    log = folder / f"{name}.log"
    with log.open("wb") as handle:
        popen = subprocess.Popen(
            [sys.executable, *args],
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
                ),
                **(env or {}),
            },
            # Not the project folder: a .env file there would be read by the service.
            cwd=folder,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    process = Process(name, f"http://127.0.0.1:{port}", popen, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited at start:\n{process.tail()}")
        try:
            if httpx.get(process.url + ready_path, timeout=1).status_code == ready_status:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.stop()
    raise RuntimeError(f"{name} did not become ready:\n{process.tail()}")


def start_emulator(folder: Path, latency_ms: float) -> Process:
    port = free_port()
    return start(
        "emulator",
        ["-m", "fulfill", "emulator", "--port", str(port), "--latency-ms", str(latency_ms)],
        folder=folder,
        ready_path="/_emulator/webhooks",
        port=port,
    )


def start_ceiling(folder: Path, workers: int = 1) -> Process:
    port = free_port()
    return start(
        f"ceiling-{workers}",
        ["-m", "bench.ceiling", "--port", str(port), "--workers", str(workers)],
        folder=folder,
        ready_path="/",
        port=port,
    )


def start_service(
    name: str, folder: Path, env: dict[str, str], *, workers: int, profile: bool = False
) -> Process:
    """``fulfill serve``; with ``profile``, under pyinstrument, saving its samples at exit.

    ``pyinstrument --load var/bench/NAME.pyisession`` shows them (``-r html`` for a page).
    """
    port = free_port()
    serve = ["-m", "fulfill", "serve", "--port", str(port), "--workers", str(workers)]
    if profile:
        samples = folder / f"{name}.pyisession"
        serve = ["-m", "pyinstrument", "-r", "pyisession", "-o", str(samples), *serve]
    process = start(
        name,
        serve,
        folder=folder,
        ready_path="/readyz",
        port=port,
        env={**env, "FULFILL_PUBLIC_URL": f"http://127.0.0.1:{port}"},
    )
    if profile:
        process.stop_signal = signal.SIGINT
    return process


def start_guide(name: str, folder: Path, env: dict[str, str], gunicorn: Sequence[str]) -> Process:
    """The guide's peer (``bench.peers.guide``) under gunicorn, with the ``gunicorn`` options.

    It has no route of its own to say it is ready: a GET of its webhook (POST
    only) answering 405 is Flask answering. No control socket: gunicorn's
    default one is a fixed path in the home folder, which a second gunicorn
    (another bench at the same time) would take over.
    """
    port = free_port()
    return start(
        name,
        [
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--no-control-socket",
            *gunicorn,
            "bench.peers.guide:app",
        ],
        folder=folder,
        ready_path="/webhook",
        port=port,
        env=env,
        ready_status=405,
    )
