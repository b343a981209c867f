"""Seeded datagram fuzzing for the CoAP actors (RFC 7252 §3 message format).

A raw encoder that builds any CoAP datagram — also ones no CoAP library would produce (invalid
UTF-8 in text options, lengths that lie, reserved values) — and a deterministic mutator over a
corpus of valid requests. Used by the suite's bounded fuzz tests and by ``bench/fuzz.py``; the same
seed gives the same datagrams.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from ..coap.wire import ACK, CON, DELETE, GET, NON, POST, PUT, RST, CoapMessage, encode
from ..coap.wire import uint_bytes as uint

__all__ = ["ACK", "CON", "DELETE", "GET", "NON", "POST", "PUT", "RST", "Mutator", "encode_message", "uint"]

OPT_OBSERVE, OPT_URI_PATH, OPT_CONTENT_FORMAT, OPT_URI_QUERY = 6, 11, 12, 15
OPT_ACCEPT, OPT_BLOCK2, OPT_BLOCK1, OPT_SIZE1 = 17, 23, 27, 60


def encode_message(
    mtype: int,
    code: int,
    mid: int,
    token: bytes = b"",
    options: Iterable[tuple[int, bytes]] = (),
    payload: bytes = b"",
) -> bytes:
    """One CoAP datagram (RFC 7252 §3) from raw parts with the project's codec, which writes option
    values as given — also ones no CoAP library would accept (invalid UTF-8, wrong lengths)."""
    return encode(CoapMessage(mtype, code, mid & 0xFFFF, token, list(options), payload))


def path_options(path: str) -> list[tuple[int, bytes]]:
    return [(OPT_URI_PATH, seg.encode()) for seg in path.strip("/").split("/") if seg]


def request(
    code: int,
    path: str,
    *,
    mid: int = 1,
    token: bytes = b"\x01\x02",
    mtype: int = CON,
    query: Iterable[str] = (),
    options: Iterable[tuple[int, bytes]] = (),
    payload: bytes = b"",
) -> bytes:
    """A request datagram for ``path`` with Uri-Query ``query`` and extra raw ``options``."""
    opts = path_options(path) + [(OPT_URI_QUERY, q.encode()) for q in query] + list(options)
    return encode_message(mtype, code, mid, token, opts, payload)


class Mutator:
    """Deterministic mutations of valid datagrams (``seed``): bit flips, byte overwrites,
    truncation, extension, invalid UTF-8 in text options, lying lengths, random header fields and
    plain garbage."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def mutate(self, datagram: bytes) -> bytes:
        rng = self.rng
        data = bytearray(datagram)
        kind = rng.randrange(10)
        if kind == 0 and data:  # flip bits
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
        elif kind == 1 and data:  # overwrite bytes
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 2:  # truncate
            data = data[: rng.randrange(len(data) + 1)]
        elif kind == 3:  # extend with random bytes
            data += rng.randbytes(rng.randint(1, 64))
        elif kind == 4:  # invalid UTF-8 in a text option
            bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
            token_len = data[0] & 0x0F if data else 0
            head = bytes(data[: 4 + token_len])
            number = rng.choice([3, 8, 11, 15, 35, 39])
            data = bytearray(head) + bytearray(encode_message(0, 0, 0, b"", [(number, bad * 2)])[4:])
            data += bytes(datagram[4 + token_len :])
        elif kind == 5 and len(data) > 4:  # option header with a length that lies
            i = rng.randrange(4, len(data))
            data[i] = rng.choice([0x0D, 0x0E, 0xDD, 0xEE, 0x0F, 0xF0, 0xFF])
        elif kind == 6 and data:  # random header: version, type, token length, code
            data[0] = rng.randrange(256)
            if len(data) > 1:
                data[1] = rng.randrange(256)
        elif kind == 7:  # a large datagram (beyond the receive buffer, or close to it)
            data += bytes([0xFF]) + rng.randbytes(rng.choice([1000, 4000, 5000, 9000]))
        elif kind == 8:  # garbage
            data = bytearray(rng.randbytes(rng.randint(0, 48)))
        else:  # repeat a chunk
            if data:
                i = rng.randrange(len(data))
                data[i:i] = data[i : i + rng.randint(1, 16)] * rng.randint(1, 8)
        return bytes(data)

    def stream(self, corpus: list[bytes]) -> Iterator[bytes]:
        """An endless stream of mutated datagrams of ``corpus``."""
        while True:
            yield self.mutate(self.rng.choice(corpus))


def scm_corpus(service_id: str = "msgin5g", prefix: str = "") -> list[bytes]:
    """Valid SU_UeConfig requests (TS 24.546 C.3) to mutate: collection and individual GETs,
    Observe, a bulk GET, a block-wise POST block, PUT and DELETE; and SU_UserProfile GETs (C.2)."""
    base = f"{prefix.strip('/')}/su-uc/v1/val-services/{service_id}/ue-configurations".strip("/")
    profiles = f"{prefix.strip('/')}/su-up/v1/val-services/{service_id}/user-profiles".strip("/")
    urn = "urn:gsma:imei:35209900-000001-8"
    body = b"\xa1pvalServiceDomainofuzz.example"
    return [
        request(GET, base, query=[f"ue-uri={urn}"]),
        request(GET, base, query=[f"ue-uri={urn}", "ue-type=35209900", "ue-snr=1"]),
        request(GET, base, query=["bulk-conf-flag=f1", f"ue-uri={urn}", "ue-uri=urn:dev:x"]),
        request(GET, f"{base}/abc", options=[(OPT_OBSERVE, b"")]),
        request(GET, base, options=[(OPT_OBSERVE, b"")]),
        request(GET, base, options=[(OPT_BLOCK2, uint(0x12))], mtype=NON),
        request(POST, base, options=[(OPT_CONTENT_FORMAT, uint(60))], payload=body),
        request(POST, base, options=[(OPT_CONTENT_FORMAT, uint(60)), (OPT_BLOCK1, uint(0x1A))], payload=body),
        request(PUT, f"{base}/abc", options=[(OPT_CONTENT_FORMAT, uint(50))], payload=b'{"a":1}'),
        request(DELETE, f"{base}/abc"),
        request(GET, ".well-known/core"),
        request(GET, profiles, query=[f"val-tgt-ue={urn}"]),
        request(GET, f"{profiles}/p1", options=[(OPT_OBSERVE, b"")]),
    ]
