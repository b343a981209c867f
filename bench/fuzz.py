"""A long seeded fuzz run against the SCM-S (RFC 7252 §3, §4.2; SPEC §2): sent, crashes, tracebacks,
hangs, RSS before and after.

Starts ``msgin5g server --insecure`` (the real CLI, a SQLite file in a temporary directory, one
provisioned UE), then sends ``--datagrams`` mutated datagrams of valid SU_UeConfig requests
(:mod:`msgin5g.testing.fuzz`, ``--seed``) in bursts of ``--burst``. After every burst a valid
request must get exactly the provisioned configuration, retransmitted as a CoAP client would
(timeouts growing from 0.25 s to 4 s, ≈ 12 s in all: a burst may fill the server's socket
buffer). Counted:

* **crashes** — the server process exited (it is restarted and the run goes on);
* **hangs** — a valid request unanswered after all retransmissions (≈ 12 s);
* **wrong answers** — a valid request answered with anything but its configuration;
* **tracebacks** and **error lines** in the server's log; the log's size;
* the server's RSS (VmRSS) after start-up and at the end, and the fuzzing rate.

Usage: ``python bench/fuzz.py [--datagrams 1000000] [--burst 100] [--seed 1]`` (loopback only).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cbor2
from aiocoap import Message

from msgin5g.store import open_store
from msgin5g.testing.fuzz import GET, Mutator, request, scm_corpus

MSGIN5G = str(Path(sys.executable).parent / "msgin5g")
UE = "urn:gsma:imei:35209900-000001-8"
SID = "svc-fuzz"
COLLECTION = "su-uc/v1/val-services/msgin5g/ue-configurations"
PROBE_TIMEOUTS = (0.25, 0.5, 1.0, 2.0, 4.0, 4.0)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Server:
    def __init__(self, tmp: Path, db: str, n: int):
        self.log_path = tmp / f"server-{n}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [MSGIN5G, "server", "--insecure", "--port", "0", "--db", db],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        m = re.match(r"listening coap://127\.0\.0\.1:(\d+)/", self.proc.stdout.readline())
        if not m:
            raise SystemExit(f"server did not start: {self.log_path.read_text()}")
        self.addr = ("127.0.0.1", int(m.group(1)))

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.log_path.read_text()


def probe(sock: socket.socket, addr, n: int) -> str:
    """'ok', 'wrong' or 'hang' for one valid scoped GET, retransmitted with growing timeouts (a
    burst may have filled the server's socket buffer); 'hang' after ≈ 12 s without an answer."""
    token = b"pb" + n.to_bytes(4, "big")
    datagram = request(GET, COLLECTION, mid=n & 0xFFFF, token=token, query=[f"ue-uri={UE}"])
    for timeout in PROBE_TIMEOUTS:
        sock.sendto(datagram, addr)
        sock.settimeout(timeout)
        try:
            while True:
                m = Message.decode(sock.recvfrom(65536)[0])
                if m.token == token:
                    if int(m.code) != 0x45:
                        return "wrong"
                    (doc,) = cbor2.loads(m.payload)
                    sid = json.loads(doc["ueConfigs"][0]["configData"])["ueServiceId"]
                    return "ok" if sid == SID else "wrong"
        except TimeoutError:
            continue
    return "hang"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datagrams", type=int, default=1_000_000)
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="msgin5g-fuzz-") as tmpdir:
        tmp = Path(tmpdir)
        db = f"sqlite:///{tmp}/fuzz.db"
        store = open_store(db)
        data = json.dumps({"msgin5gServerAddress": "coap://m.example", "ueServiceId": SID})
        store.import_docs(
            "msgin5g",
            [
                {
                    "valServiceDomain": "d",
                    "valUeIds": {"uris": [UE]},
                    "ueConfigs": [{"configType": "ON_NETWORK", "configData": data}],
                }
            ],
        )
        store.close()
        servers = [Server(tmp, db, 0)]
        srv = servers[0]
        fuzz = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        fuzz.bind(("127.0.0.1", 0))
        fuzz.setblocking(False)
        check = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        check.bind(("127.0.0.1", 0))
        outcome = {"ok": 0, "wrong": 0, "hang": 0}
        outcome[probe(check, srv.addr, 0)] += 1
        rss_before = rss_kib(srv.proc.pid)
        stream = Mutator(args.seed).stream(scm_corpus())
        crashes = sent = answers = 0
        start = time.monotonic()
        n = 1
        while sent < args.datagrams:
            for _ in range(min(args.burst, args.datagrams - sent)):
                try:
                    fuzz.sendto(next(stream), srv.addr)
                except OSError:  # e.g. a datagram larger than the socket allows
                    pass
                sent += 1
            try:
                while fuzz.recv(65536):
                    answers += 1
            except BlockingIOError:
                pass
            if srv.proc.poll() is not None:
                crashes += 1
                srv = Server(tmp, db, len(servers))
                servers.append(srv)
            outcome[probe(check, srv.addr, n)] += 1
            n += 1
            if n % 1000 == 0:
                print(f"... {sent:,} sent, {outcome}, {crashes} crashes", file=sys.stderr)
        elapsed = time.monotonic() - start
        rss_after = rss_kib(srv.proc.pid)
        logs = [s.stop() for s in servers]
    text = "".join(logs)
    figures = {
        "datagrams_sent": sent,
        "seed": args.seed,
        "seconds": round(elapsed, 1),
        "datagrams_per_second": round(sent / elapsed),
        "answers_to_fuzz": answers,
        "probes": sum(outcome.values()),
        "probes_ok": outcome["ok"],
        "wrong_answers": outcome["wrong"],
        "hangs": outcome["hang"],
        "crashes": crashes,
        "tracebacks": text.count("Traceback"),
        "error_lines": sum(" ERROR " in line for line in text.splitlines()),
        "log_bytes": len(text.encode()),
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_after,
    }
    if args.json:
        print(json.dumps(figures))
    else:
        for k, v in figures.items():
            print(f"{k:>22}: {v:,}" if isinstance(v, int) else f"{k:>22}: {v}")


if __name__ == "__main__":
    main()
