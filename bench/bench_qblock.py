"""Bulk over UDP: Uu datagrams and bytes with RFC 9177 Q-Block2, with RFC 7959 Block2, and per UE.

TS 24.546 clause 5 ("shall support RFC 9177"); SPEC D7 b, d. The same fleet as
``bench_gateway.py`` (90 % by one IMEI-range document with placeholders, 1 % with a document of
their own, 5 % without configuration, 5 % outside the gateway's coverage), on a real SCM-S
(SQLite, UDP) in this process. A client in the gateway's place speaks on one UDP socket and counts
every datagram and byte each way (CoAP headers included), as the Uu tap of ``bench_gateway.py``
does:

* **per UE** — one confirmable GET per UE (``ue-uri``), the answer piggybacked: what the gateway
  sends with ``--no-bulk``;
* **bulk, RFC 7959** — the UEs packed into bulk GETs that fit one datagram (``bulk.pack``, SPEC
  D7 a); each further 1,024-byte block costs a follow-up naming only the flag (D7 b);
* **bulk, Q-Block2** — the same bulk GETs offering Q-Block2 (NUM 0, M set, confirmable) through
  the project's message layer (``CoapEndpoint.request(..., qblock=QBlockOffer(...))``, follow-ups
  naming only the flag): the blocks come as a burst, the first piggybacked; a Continue (NON)
  after each full set of MAX_PAYLOADS.

Every UE's answer is checked (code and its own ``ueServiceId``). No loss here: the figures are the
floor each mode needs. Usage: ``python bench/bench_qblock.py [--ues 10000] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import socket
import sys
import tempfile
from pathlib import Path

import cbor2
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import CON
from aiocoap.optiontypes import OpaqueOption

sys.path.insert(0, str(Path(__file__).parent))
from bench_gateway import DOMAIN, check, setup, ue_uri
from msgin5g.authz import LAB_IDENTITY_OPTION
from msgin5g.bulk import (
    BulkItem,
    decode_answer,
    entry_problem,
    followup_query,
    pack,
    request_options,
)
from msgin5g.coap import wire
from msgin5g.coap.qblock_client import QBlockOffer
from msgin5g.coap.udp import CoapEndpoint
from msgin5g.server.app import ServerConfig, start_server
from msgin5g.server.service import ServiceConfig

PATH = ("su-uc", "v1", "val-services", "msgin5g", "ue-configurations")
IDENTITY = b"gateway:gw1"


class Uu:
    """One UDP socket towards the SCM-S that counts what crosses it."""

    def __init__(self, port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.addr = ("127.0.0.1", port)
        self.up = self.down = self.up_bytes = self.down_bytes = 0
        self.mids, self.tokens = itertools.count(1), itertools.count(1)

    def request(self, query, mtype=CON, block2=None) -> bytes:
        m = Message(code=Code.GET, uri_path=PATH)
        m.mtype = mtype
        m.opt.uri_query = tuple(query)
        m.opt.add_option(OpaqueOption(LAB_IDENTITY_OPTION, IDENTITY))
        if block2 is not None:
            m.opt.block2 = block2
        m.mid = next(self.mids) & 0xFFFF
        m.token = next(self.tokens).to_bytes(4, "big")
        data = m.encode()
        self.sock.sendto(data, self.addr)
        self.up += 1
        self.up_bytes += len(data)
        return m.token

    async def recv(self, timeout: float = 10.0) -> Message:
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 65536), timeout)
        self.down += 1
        self.down_bytes += len(data)
        return Message.decode(data)

    def counts(self) -> dict:
        return {"up": self.up, "down": self.down, "up_bytes": self.up_bytes, "down_bytes": self.down_bytes}


async def per_ue(uu: Uu, n: int) -> dict[int, tuple[int, bytes]]:
    out = {}
    for i in range(n):
        uu.request([f"ue-uri={ue_uri(i)}"])
        r = await uu.recv()
        out[i] = (int(r.code), r.payload)
    return out


def bulk_gets(n: int):
    flags = (f"b{k}" for k in itertools.count())
    fixed = request_options(PATH, extra=[(LAB_IDENTITY_OPTION, IDENTITY)])
    return pack([BulkItem(ue_uri(i)) for i in range(n)], new_flag=lambda: next(flags), fixed_options=fixed)


async def bulk_rfc7959(uu: Uu, get) -> bytes:
    uu.request(get.uri_query(), block2=(0, False, 6))
    r = await uu.recv()
    body = r.payload
    while r.opt.block2 is not None and r.opt.block2.more:
        uu.request(followup_query(get.flag), block2=(r.opt.block2.block_number + 1, False, 6))
        r = await uu.recv()
        body += r.payload
    return body


class CountingEndpoint(CoapEndpoint):
    """The message layer's datagram shell, counting bytes each way (datagrams it counts itself)."""

    bytes_out = bytes_in = 0

    def sendto(self, data: bytes, addr=None) -> None:
        self.bytes_out += len(data)
        super().sendto(data, addr)

    def counts(self) -> dict:
        return {
            "up": self.datagrams_out,
            "down": self.datagrams_in,
            "up_bytes": self.bytes_out,
            "down_bytes": self.bytes_in,
        }


def _count_in(holder: dict):
    def demux(data: bytes, addr) -> bool:
        holder["ep"].bytes_in += len(data)
        return False

    return demux


async def bulk_qblock2(ep: CountingEndpoint, get) -> bytes:
    fixed = [(wire.OPT_URI_PATH, p.encode()) for p in PATH] + [(LAB_IDENTITY_OPTION, IDENTITY)]
    query = [(wire.OPT_URI_QUERY, q.encode()) for q in get.uri_query()]
    followup = fixed + [(wire.OPT_URI_QUERY, q.encode()) for q in followup_query(get.flag)]
    offer = QBlockOffer(followup_options=tuple(followup))
    msg = wire.CoapMessage(wire.CON, wire.GET, 0, b"", fixed + query)
    answer = await ep.request(msg, qblock=offer, blockwise=True, timeout=60)
    assert answer.code == 0x45, wire.code_text(answer.code)
    return answer.payload


async def run_bulk(uu: Uu, n: int, fetch) -> dict[int, tuple[int, bytes]]:
    out = {}
    index = {ue_uri(i): i for i in range(n)}
    for get in bulk_gets(n):
        entries = decode_answer(await fetch(uu, get))
        assert len(entries) == len(get.ue_uris)
        for uri, entry in zip(get.ue_uris, entries, strict=True):
            problem = entry_problem(entry)
            out[index[uri]] = (problem.code if problem else 0x45, cbor2.dumps([entry]))
    return out


async def main(n: int, as_json: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        srv = await start_server(
            ServerConfig(
                port=0,
                db_url=f"sqlite:///{tmp}/scm.db",
                insecure=True,
                tcp=False,
                service=ServiceConfig(service_domains={"msgin5g": DOMAIN}),
            )
        )
        try:
            s = setup(n)
            srv.store.import_docs("msgin5g", s["docs"])
            srv.store.set_gateway("gw1", s["coverage"])
            results = {}
            for name, run in (
                ("per-ue", lambda uu: per_ue(uu, n)),
                ("bulk-rfc7959", lambda uu: run_bulk(uu, n, bulk_rfc7959)),
                ("bulk-qblock2", lambda ep: run_bulk(ep, n, bulk_qblock2)),
            ):
                if name == "bulk-qblock2":
                    holder: dict = {}
                    uu = holder["ep"] = CountingEndpoint.connect(
                        "127.0.0.1", srv.port, demux=_count_in(holder)
                    )
                else:
                    uu = Uu(srv.port)
                answers = await run(uu)
                bad = [i for i in range(n) if not check(i, *answers[i])]
                results[name] = {**uu.counts(), "wrong": len(bad), "gets": len(bulk_gets(n))}
                uu.sock.close() if isinstance(uu, Uu) else uu.close()
        finally:
            await srv.close()
    base = results["per-ue"]
    for r in results.values():
        r["datagrams"] = r["up"] + r["down"]
        r["bytes"] = r["up_bytes"] + r["down_bytes"]
        r["datagram_ratio"] = (base["up"] + base["down"]) / r["datagrams"]
        r["bytes_ratio"] = (base["up_bytes"] + base["down_bytes"]) / r["bytes"]
    report = {"ues": n, "results": results}
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{n} UEs over UDP (no loss); ratios: per-UE figure / this mode's")
        head = ("mode", "up", "down", "datagrams", "bytes", "x fewer dgrams", "x fewer bytes", "wrong")
        print("{:<14}{:>7}{:>7}{:>11}{:>10}{:>16}{:>15}{:>7}".format(*head))
        for name, r in results.items():
            print(
                f"{name:<14}{r['up']:>7}{r['down']:>7}{r['datagrams']:>11}{r['bytes']:>10}"
                f"{r['datagram_ratio']:>16.2f}{r['bytes_ratio']:>15.2f}{r['wrong']:>7}"
            )
    return report


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ues", type=int, default=10_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    report = asyncio.run(main(args.ues, args.json))
    sys.exit(1 if any(r["wrong"] for r in report["results"].values()) else 0)
