"""A real ``msgin5g server`` process with its log in a file, and a raw UDP client that sends exactly
the datagram a test builds (:mod:`msgin5g.testing.fuzz`) and decodes the answer with aiocoap."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import cbor2
from aiocoap import Message

MSGIN5G = str(Path(sys.executable).parent / "msgin5g")
COLLECTION = "su-uc/v1/val-services/msgin5g/ue-configurations"


class LoggedServer:
    """``msgin5g server --port 0`` (insecure lab mode unless ``insecure=False``) on ``db``, stderr in
    ``log``; ``-v`` so that every warning and error aiocoap or the server logs is there to check."""

    def __init__(self, tmp: Path, *extra: str, db: str | None = None, insecure: bool = True):
        self.log_path = tmp / f"server-{id(self)}.log"
        self.db = db or f"sqlite:///{tmp}/scm-{id(self)}.db"
        args = [MSGIN5G, "server", "--port", "0", "--db", self.db, *extra]
        if insecure:
            args.insert(2, "--insecure")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"listening coap://127\.0\.0\.1:(\d+)/", line)
        assert m, (line, self.log())
        self.port = int(m.group(1))
        self.addr = ("127.0.0.1", self.port)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self._log.close()
        return self.log_path.read_text()


class UdpClient:
    """One UDP socket on loopback: send raw datagrams, receive and decode answers."""

    def __init__(self, addr):
        self.addr = addr
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(10)

    def send(self, datagram: bytes) -> None:
        self.sock.sendto(datagram, self.addr)

    def recv(self, timeout: float = 10) -> Message:
        self.sock.settimeout(timeout)
        data, _ = self.sock.recvfrom(65536)
        return Message.decode(data)

    def exchange(self, datagram: bytes, timeout: float = 10, retransmit: int = 0) -> Message:
        """Send and return the answer with the same token (skipping stale answers); with
        ``retransmit``, resend after each ``timeout`` like a CoAP client (RFC 7252 §4.2) — for
        when the server's socket buffer may have been full."""
        token = datagram[4 : 4 + (datagram[0] & 0x0F)]
        for attempt in range(retransmit + 1):
            self.send(datagram)
            try:
                while True:
                    m = self.recv(timeout)
                    if m.token == token or (not token and m.mid == int.from_bytes(datagram[2:4], "big")):
                        return m
            except TimeoutError:
                if attempt == retransmit:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.sock.close()


def problem_of(m: Message, code: int, cause: str | None = None) -> dict:
    """Assert an error answer with concise problem details (RFC 9290, Content-Format 257)."""
    assert int(m.code) == code, (m.code, m.payload)
    assert m.opt.content_format is not None and int(m.opt.content_format) == 257, m
    pd = cbor2.loads(m.payload)
    assert pd[-4] == code and pd[-1] and pd[-2], pd
    if cause is not None:
        assert pd["cause"] == cause, pd
    return pd


def no_tracebacks(log: str) -> None:
    assert "Traceback" not in log, log[-4000:]
    assert " ERROR " not in log, log[-4000:]
