"""Actor processes started with ``--http`` for the operations tests (SPEC D15)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request

from .procs import MSGIN5G


class HttpActor:
    """``msgin5g <argv> --http 127.0.0.1:0``; reads stdout up to the ``metrics`` line (and the
    ``console`` line of an SCM-S) and keeps the URLs it printed."""

    def __init__(self, *argv: str, console: bool = False, env: dict | None = None):
        self.proc = subprocess.Popen(
            [MSGIN5G, *argv, "--http", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )
        self.lines: list[str] = []
        self.api_root = self.metrics_url = self.console_url = None
        while True:
            line = self.proc.stdout.readline()
            assert line, (self.lines, self.proc.stderr.read())
            self.lines.append(line)
            if m := re.match(r"listening (coap://127\.0\.0\.1:\d+)/su-uc/v1", line):
                self.api_root = m.group(1)
            if m := re.match(r"metrics (http://\S+)/metrics", line):
                self.metrics_url = m.group(1)
                if not console:
                    break
            if m := re.match(r"console (http://\S+)", line):
                self.console_url = m.group(1)
                break
        self.base = self.metrics_url

    def get(self, path: str, headers: dict | None = None) -> tuple[int, str]:
        req = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metrics(self) -> dict[str, float]:
        """The exposition text as {series with labels: value}."""
        status, text = self.get("/metrics")
        assert status == 200
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self) -> tuple[str, str]:
        self.proc.send_signal(signal.SIGINT)
        try:
            out, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return out, err


def json_or_text(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text
