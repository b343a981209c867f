"""Processes and ports for the benchmarks: one way to start a ``msgin5g server`` and read its port,
stop it, pick a free loopback port and read a process's CPU time (Linux /proc)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def start_server(*args: str) -> tuple[subprocess.Popen, int]:
    """``msgin5g server --port 0 ARGS…``; returns the process and the UDP port of its ready line."""
    p = subprocess.Popen(
        [str(BIN / "msgin5g"), "server", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = p.stdout.readline()
    m = re.search(r"coap://127\.0\.0\.1:(\d+)/", line)
    if not m:
        p.kill()
        raise SystemExit(f"msgin5g server did not start: {line!r}")
    return p, int(m.group(1))


def stop(p: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not stopped in 15 s."""
    p.terminate()
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
