"""A large request body over UDP: datagrams each way with RFC 9177 Q-Block1 and with RFC 7959 Block1.

TS 24.546 clause 5 ("shall support RFC 9177"); SPEC D7 d. A real SCM-S (SQLite, UDP) in this process;
the project's message layer POSTs one document of about ``--kib`` KiB of CBOR (an administrator's
``msgin5g config import`` of a large document) ``--runs`` times per mode, each with a fresh endpoint:

* **Q-Block1** — ``CoapEndpoint.request(..., qblock1=QBlock1Offer())``: block 0 confirmable, then
  sets of MAX_PAYLOADS as NON; only the blocks a 4.08 lists go again; the 2.01 answer (the stored
  document) comes back as Q-Block2;
* **Block1** — ``CoapEndpoint.request(..., blockwise=True)``: one confirmable block per exchange,
  each answered 2.31 (RFC 7959 §2.5); the 2.01 answer as RFC 7959 Block2 follow-ups.

``--loss P`` drops every datagram each way with probability P (seeded per run, each direction its
own stream). The modes alternate run by run. Every answer is checked (2.01, the document as sent).
Usage: ``python bench/bench_qblock1.py [--kib 11] [--runs 6] [--loss 0.3] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile

import cbor2

from msgin5g.coap import wire as cw
from msgin5g.coap.msglayer import MessageLayer, Params
from msgin5g.coap.qblock import QBlockParams
from msgin5g.coap.qblock1_client import QBlock1Offer
from msgin5g.coap.udp import CoapEndpoint
from msgin5g.server.app import ServerConfig, start_server
from msgin5g.server.service import ServiceConfig

DOMAIN = "msgin5g.example"
COLLECTION = ("su-uc", "v1", "val-services", "msgin5g", "ue-configurations")
#: timers for a loopback "radio": short, as a deployment on a link with a small round trip may set them
QB = QBlockParams(non_timeout=0.2, non_receive_timeout=0.2, non_max_retransmit=8, non_partial_timeout=120)
ML = Params(ack_timeout=0.2, max_retransmit=12)


def document(i: int, kib: int) -> dict:
    config = json.dumps({"msgin5gServerAddress": "coap://m.example", "ueServiceId": f"s{i}@x"})
    return {
        "valServiceDomain": DOMAIN,
        "valUeIds": {"uris": [f"urn:dev:bench-{i}"]},
        "configName": f"big-{i}-" + "z" * (kib * 1024),
        "ueConfigs": [{"configType": "ON_NETWORK", "configData": config}],
    }


async def one(port: int, doc: dict, mode: str, loss: float, seed: int) -> tuple[int, int]:
    up, down = random.Random(seed), random.Random(seed + 10_000)
    counts = [0, 0]

    class Counting(CoapEndpoint):
        def sendto(self, data, addr=None):
            counts[0] += 1
            if up.random() >= loss:
                super().sendto(data, addr)

    def demux(data, addr) -> bool:
        counts[1] += 1
        return down.random() < loss

    ep = Counting.connect("127.0.0.1", port, MessageLayer(ML, random.Random(seed)), demux=demux)
    opts = [(cw.OPT_URI_PATH, p.encode()) for p in COLLECTION] + [(cw.OPT_CONTENT_FORMAT, bytes([60]))]
    msg = cw.CoapMessage(cw.CON, 0x02, 0, b"", opts, cbor2.dumps(doc))
    kw = {"qblock1": QBlock1Offer(params=QB)} if mode == "Q-Block1" else {"blockwise": True}
    try:
        answer = await ep.request(msg, timeout=300, **kw)
    finally:
        ep.close()
    created = cbor2.loads(answer.payload)
    assert answer.code == 0x41 and created["configName"] == doc["configName"], (answer.code, mode)
    return counts[0], counts[1]


async def main(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        srv = await start_server(
            ServerConfig(
                port=0,
                db_url=f"sqlite:///{tmp}/scm.db",
                insecure=True,
                service=ServiceConfig(service_domains={DOMAIN.split(".")[0]: DOMAIN}),
                qblock=QBlockParams(non_timeout=0.2),
            )
        )
        try:
            results: dict[str, list[tuple[int, int]]] = {"Q-Block1": [], "Block1": []}
            for run in range(args.runs):
                for mode in ("Q-Block1", "Block1") if run % 2 == 0 else ("Block1", "Q-Block1"):
                    doc = document(run * 2 + (mode == "Block1"), args.kib)
                    results[mode].append(await one(srv.port, doc, mode, args.loss, seed=run + 1))
        finally:
            await srv.close()
    size = len(cbor2.dumps(document(0, args.kib)))
    out = {"body_bytes": size, "blocks": -(-size // 1024), "loss": args.loss, "runs": args.runs}
    for mode, rs in results.items():
        out[mode] = {
            "up_median": statistics.median(r[0] for r in rs),
            "down_median": statistics.median(r[1] for r in rs),
            "total_median": statistics.median(r[0] + r[1] for r in rs),
            "totals": [r[0] + r[1] for r in rs],
        }
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kib", type=int, default=11)
    p.add_argument("--runs", type=int, default=6)
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    r = asyncio.run(main(a))
    if a.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"body {r['body_bytes']} bytes ({r['blocks']} blocks), loss {r['loss']}, {r['runs']} runs each")
        for mode in ("Q-Block1", "Block1"):
            m = r[mode]
            print(
                f"  {mode:9s} datagrams up {m['up_median']:>5} down {m['down_median']:>5} "
                f"total {m['total_median']:>5} (median; runs {m['totals']})"
            )
