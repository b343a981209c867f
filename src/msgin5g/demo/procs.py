"""The demo's child processes: start, watch, measure and stop them — and leave nothing behind.

Every actor is an ordinary ``msgin5g`` command in its own process. Each child

* writes stdout and stderr to a log file (never a pipe that could fill and block it); the demo
  reads the file for the child's machine-readable *ready line* — one JSON object, e.g.
  ``{"ready": "relay", "listen": {"pc5": ["127.0.0.1", 40123]}}``, which every actor prints once
  it serves — and shows its last lines if it fails;
* runs in a session of its own, so that Ctrl-C at the terminal reaches only the demo, which then
  stops the children in order (each prints its counters on SIGINT);
* on Linux, is killed by the kernel if the demo itself dies without cleaning up
  (``PR_SET_PDEATHSIG``), so not even ``kill -9`` of the demo leaves processes behind.

:class:`Supervisor` notices a child that exits on its own (:meth:`Supervisor.watch`) — the demo
then stops everything else and reports what it had done.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def msgin5g_argv(*args: str) -> list[str]:
    """The ``msgin5g`` command line under this interpreter."""
    return [sys.executable, "-m", "msgin5g.cli", *args]


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    """In the child: SIGINT handled normally even if the demo was started with it ignored (a
    background job of a non-interactive shell), and, on Linux, SIGKILL from the kernel when the
    demo dies (prctl PR_SET_PDEATHSIG)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def peak_rss_kib(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a live process, in KiB; None where /proc is unavailable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class ChildFailed(Exception):
    """A child exited on its own, or did not come up."""

    def __init__(self, child: Child, what: str):
        self.child = child
        super().__init__(f"{child.label} (pid {child.pid}) {what}")


@dataclass
class Child:
    name: str  # short key: server, relay, gateway, cm-client, wire, observer
    label: str  # for people: "the SCM-S"
    argv: list[str]
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    ready: dict | None = None  # the child's ready line
    peak_rss_kib: int | None = None
    expected_exit: bool = False
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def json_lines(self) -> list[dict]:
        """The JSON objects the child has printed so far, one per line (ready lines, results)."""
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    value = json.loads(line)
                    if isinstance(value, dict):
                        out.append(value)
        return out

    def listen(self, side: str) -> tuple[str, int]:
        """(host, port) of a side the ready line names, e.g. ``pc5``."""
        host, port = self.ready["listen"][side]
        return host, int(port)

    def log_tail(self, lines: int = 12) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def sample_rss(self) -> None:
        if self.running and self.pid is not None:
            rss = peak_rss_kib(self.pid)
            if rss is not None:
                self.peak_rss_kib = max(self.peak_rss_kib or 0, rss)


class Supervisor:
    """Starts children, fails fast when one of them dies, and stops them all (reverse order)."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.children: list[Child] = []

    async def start(
        self,
        name: str,
        label: str,
        args: list[str],
        ready: str | Callable[[dict], bool] | None,
        *,
        stdin_pipe: bool = False,
        stdout_pipe: bool = False,
        timeout: float = READY_TIMEOUT,
        may_exit: bool = False,
    ) -> Child:
        """Start ``msgin5g ARGS`` (or any argv when ``args[0]`` is absolute) and wait for its ready
        line: a JSON line ``{"ready": READY, ...}``, or the first JSON line a predicate ``ready``
        accepts (None: do not wait). ``may_exit``: the child ending on its own is not a failure of
        the demo (its caller judges it)."""
        argv = args if args and os.path.isabs(args[0]) else msgin5g_argv(*args)
        child = Child(name, label, argv, self.log_dir / f"{name}.log", expected_exit=may_exit)
        log = child.log_path.open("wb")
        try:
            child.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin_pipe else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if stdout_pipe else log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_child_setup,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()
        self.children.append(child)
        if ready is not None:
            accept = ready if callable(ready) else lambda line: line.get("ready") == ready
            await self._wait_ready(child, accept, timeout)
        return child

    async def _wait_ready(self, child: Child, accept: Callable[[dict], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            line = next((v for v in child.json_lines() if accept(v)), None)
            if line is not None:
                child.ready = line
                return
            if not child.running:
                await child.proc.wait()
                raise ChildFailed(child, f"did not start ({describe_exit(child.proc.returncode)})")
            if time.monotonic() > deadline:
                raise ChildFailed(child, f"did not report ready within {timeout:g} s")
            await asyncio.sleep(0.05)

    async def watch(self) -> None:
        """Return never; raise :class:`ChildFailed` as soon as a child exits unexpectedly.
        Samples every child's peak memory meanwhile."""
        while True:
            for child in self.children:
                child.sample_rss()
                if child.proc is not None and child.proc.returncode is not None and not child.expected_exit:
                    raise ChildFailed(child, f"exited unexpectedly ({describe_exit(child.proc.returncode)})")
            await asyncio.sleep(0.2)

    async def stop(self, child: Child, timeout: float = STOP_TIMEOUT) -> str:
        """SIGINT (each actor then prints its counters), SIGKILL after ``timeout``; how it ended."""
        child.expected_exit = True
        proc = child.proc
        if proc is None:
            return "not started"
        if proc.returncode is not None:
            return describe_exit(proc.returncode)
        child.sample_rss()
        with contextlib.suppress(ProcessLookupError):
            if proc.stdin is not None:
                proc.stdin.close()
            proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
            return "stopped"
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return f"killed after {timeout:g} s"

    async def stop_all(self) -> list[tuple[Child, str]]:
        """Stop every child, newest first (UEs and gateways before the wire, the SCM-S last)."""
        done = []
        for child in reversed(self.children):
            done.append((child, await self.stop(child)))
        return done

    def kill_all_now(self) -> None:
        """Last resort (the demo is being torn down hard): SIGKILL whatever still runs."""
        for child in self.children:
            if child.running:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
