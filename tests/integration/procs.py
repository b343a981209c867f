"""A real ``msgin5g server`` child process for CLI-level integration tests."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

MSGIN5G = str(Path(sys.executable).parent / "msgin5g")


class ServerProcess:
    """``msgin5g server --port 0`` on ``db``; insecure lab mode unless ``insecure=False`` (then pass
    secured by the store's keys). Its first output line names the UDP listener."""

    def __init__(self, db: str, *extra: str, insecure: bool = True):
        args = [MSGIN5G, "server", "--port", "0", "--db", db, *extra]
        if insecure:
            args.insert(2, "--insecure")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"listening (coap://127\.0\.0\.1:(\d+))/su-uc/v1", line)
        assert m, (line, self.proc.stderr.read() if self.proc.poll() is not None else "")
        self.api_root, self.port = m.group(1), int(m.group(2))
        self.db = db

    @property
    def collection(self) -> str:
        return f"{self.api_root}/su-uc/v1/val-services/msgin5g/ue-configurations"

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no chance to write anything back
        self.proc.communicate(timeout=10)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err
