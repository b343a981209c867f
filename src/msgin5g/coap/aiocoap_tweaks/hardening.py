"""Hardening of aiocoap's UDP server path against malformed input and floods (RFC 7252 §4.2, §4.5,
§5.4.1, §5.9.2.9; RFC 7959 §2.9.3, §4; TS 24.546 C.1.3; SPEC §2).

aiocoap 0.4.x, on a server context, leaves three gaps that a device under test or an attacker on
the wire can reach; each adjustment here closes one, is installed explicitly by the SCM-S process
(:func:`install`, never on import) and has a test that fails when the aiocoap internals it relies
on change (``tests/unit/test_aiocoap_hardening.py``):

1. **Datagram guard.** An option value that is not valid UTF-8 in a text option (Uri-Path,
   Uri-Query, ...) makes ``Message.decode`` raise ``UnicodeDecodeError`` inside the transport's
   ``datagram_msg_received``: the request gets no answer and asyncio logs a traceback per datagram.
   A datagram longer than the receive buffer (4,096 bytes) arrives truncated and is dropped
   silently. The guard answers both as RFC 7252 asks: a request with a malformed option value gets
   **4.02 Bad Option** (§5.4.1, §5.4.3: a value of the wrong format is treated like an
   unrecognised option), a truncated request **4.13 Request Entity Too Large with Size1** (§5.9.2.9,
   RFC 7959 §4), both with concise problem details (Content-Format 257); a malformed confirmable
   message that is not a request is rejected with RST (§4.2). Nothing is logged per datagram: the
   guard counts (``counters``) and logs a summary at most every :data:`LOG_INTERVAL` seconds.
2. **Bounded duplicate detection.** aiocoap remembers every message ID for EXCHANGE_LIFETIME
   (247 s) with one timer per message, so its memory grows with rate × 247 s. The cache here keeps
   the same entries in one insertion-ordered map with at most ``max_entries`` entries; when full,
   the oldest entry is shed (counted in ``shed`` and logged). Consequence of shedding, which only
   a flood triggers: a retransmission of a shed exchange is processed again instead of being
   answered from the cache (RFC 7252 §4.5 makes deduplication a SHOULD; every SU_UeConfig method
   but POST is idempotent).
3. **Stream transports.** Over TCP and WebSockets the same malformed option value raised out of the
   connection's ``data_received``; :func:`install_stream_guard` makes it aiocoap's own parse error,
   which aborts the connection with a diagnostic (RFC 8323 §5.6) and no traceback.
4. **Arrival time.** Each request is stamped with the loop time it arrived (:func:`arrival_time`),
   so the server can tell how long it waited and shed load with 5.03 + Max-Age rather than answer
   after the client has given up (SPEC §2 error table).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import cbor2

from ..wire import ACK, CON, NON, OPT_CONTENT_FORMAT, OPT_SIZE1, CoapMessage, encode, reset, uint_bytes
from .core import EncodedResponse

log = logging.getLogger("msgin5g.coap")

LOG_INTERVAL = 10.0  # s between summary log lines of the guard and the cache
CF_PROBLEM = 257
_ARRIVAL_ATTR = "_msgin5g_arrival"

BAD_REQUEST, BAD_OPTION, REQUEST_ENTITY_TOO_LARGE = 0x80, 0x82, 0x8D
_TITLES = {
    BAD_REQUEST: "Bad Request",
    BAD_OPTION: "Bad Option",
    REQUEST_ENTITY_TOO_LARGE: "Request Entity Too Large",
}


@dataclass(frozen=True)
class Header:
    """The fixed part of a CoAP message (RFC 7252 §3)."""

    mtype: int
    tkl: int
    code: int
    mid: int
    token: bytes

    @property
    def is_request(self) -> bool:
        return 1 <= self.code <= 31


def parse_header(data: bytes) -> Header | None:
    """Version, type, token and code of a datagram, or None when not even those are CoAP."""
    if len(data) < 4:
        return None
    first, code, mid = struct.unpack("!BBH", data[:4])
    tkl = first & 0x0F
    if first >> 6 != 1 or tkl > 8 or len(data) < 4 + tkl:
        return None
    return Header((first >> 4) & 0x03, tkl, code, mid, data[4 : 4 + tkl])


def problem_answer(
    header: Header, code: int, detail: str, cause: str, size1: int | None = None, mid: int | None = None
) -> bytes:
    """The encoded answer to a request: piggybacked ACK for CON, NON for NON (RFC 7252 §5.2),
    carrying concise problem details (RFC 9290; TS 24.546 C.1.3) and Size1 for a 4.13."""
    if header.mtype == CON:
        mtype, mid = ACK, header.mid
    else:
        mtype, mid = NON, (mid if mid is not None else int.from_bytes(os.urandom(2), "big"))
    opts = [(OPT_CONTENT_FORMAT, uint_bytes(CF_PROBLEM))]
    if size1 is not None:
        opts.append((OPT_SIZE1, uint_bytes(size1)))
    body = cbor2.dumps({-1: _TITLES[code], -2: detail, -4: code, "cause": cause})
    return encode(CoapMessage(mtype, code, mid, header.token, opts, body))


def reset_for(header: Header) -> bytes:
    """RST for a confirmable message the server cannot process (RFC 7252 §4.2)."""
    return reset(header.mid)


@dataclass
class Verdict:
    """What to do with a datagram the transport could not hand to aiocoap."""

    answer: bytes | None  # bytes to send back, or None to drop
    counter: str


def screen_truncated(data: bytes, limit: int) -> Verdict:
    """A datagram cut at the receive buffer (MSG_TRUNC): a request gets 4.13 with Size1 = the
    largest datagram this server reads (RFC 7252 §5.9.2.9; RFC 7959 §2.9.3 — send the body
    block-wise, or split the query); anything else is dropped."""
    header = parse_header(data)
    if header is None or not header.is_request or header.mtype not in (CON, NON):
        return Verdict(None, "truncated-dropped")
    detail = (
        f"the request datagram is longer than {limit} bytes, the most this server reads over UDP; "
        "send the body block-wise (RFC 7959), fewer query options per request, or use coap+tcp"
    )
    return Verdict(
        problem_answer(header, REQUEST_ENTITY_TOO_LARGE, detail, "REQUEST_TOO_LARGE", size1=limit),
        "truncated-answered",
    )


def screen_undecodable(data: bytes, error: Exception) -> Verdict:
    """A datagram aiocoap's decoder raised on with something other than its own UnparsableMessage
    (e.g. invalid UTF-8 in a text option): a request gets 4.02 Bad Option (RFC 7252 §5.4.1, §5.4.3),
    another confirmable message RST (§4.2), the rest is dropped."""
    header = parse_header(data)
    if header is None:
        return Verdict(None, "malformed-dropped")
    if header.is_request and header.mtype in (CON, NON):
        detail = f"an option value is malformed ({type(error).__name__}: {error})"[:200]
        return Verdict(problem_answer(header, BAD_OPTION, detail, "BAD_OPTION"), "malformed-answered")
    if header.mtype == CON:
        return Verdict(reset_for(header), "malformed-reset")
    return Verdict(None, "malformed-dropped")


def screen_unparsable(data: bytes) -> Verdict:
    """A datagram with a message format error (RFC 7252 §4.2): a confirmable one is rejected
    with RST, the rest silently ignored (as §4.2 and §4.3 prescribe) — and counted."""
    header = parse_header(data)
    if header is not None and header.mtype == CON:
        return Verdict(reset_for(header), "unparsable-reset")
    return Verdict(None, "unparsable-dropped")


class _Summary:
    """Counters with a log line at most every LOG_INTERVAL seconds (never one per datagram)."""

    def __init__(self, what: str, clock: Callable[[], float] = time.monotonic):
        self.what, self.clock = what, clock
        self.counters: dict[str, int] = {}
        self._logged: dict[str, int] = {}
        self._last = -LOG_INTERVAL

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n
        now = self.clock()
        if now - self._last >= LOG_INTERVAL:
            self._last = now
            new = {k: v - self._logged.get(k, 0) for k, v in self.counters.items()}
            self._logged = dict(self.counters)
            log.warning("%s: %s", self.what, ", ".join(f"{k} +{v}" for k, v in sorted(new.items()) if v))


# -- duplicate detection -----------------------------------------------------------------------------
@dataclass
class DuplicateCache:
    """Message IDs seen in the last ``lifetime`` seconds and the response sent to each (RFC 7252
    §4.5), at most ``max_entries`` of them. Dict-like where aiocoap's message manager expects a dict
    (``key in``, ``[key]``, ``[key] = response``, ``pop``)."""

    lifetime: float
    max_entries: int
    shed: int = 0
    _entries: OrderedDict = field(default_factory=OrderedDict)  # key → [expires, response]

    def expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, item = next(iter(entries.items()))
            if item[0] > now:
                return
            del entries[key]

    def add(self, key, now: float) -> int:
        """Remember a new message ID; returns how many older entries were shed to make room."""
        self.expire(now)
        shed = 0
        while len(self._entries) >= self.max_entries:
            self._entries.popitem(last=False)
            shed += 1
        self._entries[key] = [now + self.lifetime, None]
        self.shed += shed
        return shed

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    def __getitem__(self, key):
        return self._entries[key][1]

    def __setitem__(self, key, response) -> None:
        item = self._entries.get(key)
        if item is not None:
            item[1] = response

    def __iter__(self):
        return iter(self._entries)

    def items(self):
        """(key, response sent or None) in arrival order, like the dict aiocoap keeps."""
        return ((key, item[1]) for key, item in self._entries.items())

    def pop(self, key, default=None):
        item = self._entries.pop(key, None)
        return default if item is None else item[1]


def arrival_time(message) -> float | None:
    """Loop time at which a UDP request arrived (set by the installed duplicate detection)."""
    return getattr(message, _ARRIVAL_ATTR, None)


# -- installation --------------------------------------------------------------------------------------
@dataclass
class Hardening:
    """What :func:`install` put in place, with its counters (exported as metrics/logs)."""

    caches: list[DuplicateCache] = field(default_factory=list)
    guard: _Summary = field(default_factory=lambda: _Summary("malformed or oversize datagrams"))

    @property
    def counters(self) -> dict[str, int]:
        out = dict(self.guard.counters)
        out["duplicate-cache-shed"] = sum(c.shed for c in self.caches)
        out["duplicate-cache-entries"] = sum(len(c) for c in self.caches)
        return out


def _message_managers(ctx):
    for ri in getattr(ctx, "request_interfaces", ()):
        mm = getattr(ri, "token_interface", None)
        if hasattr(mm, "_deduplicate_message") and hasattr(mm, "message_interface"):
            yield mm


def _install_cache(mm, cache: DuplicateCache, shed_log: _Summary) -> None:
    from aiocoap.numbers.types import CON as AIO_CON

    loop = mm.loop

    def deduplicate(message) -> bool:
        now = loop.time()
        setattr(message, _ARRIVAL_ATTR, now)
        key = (message.remote, message.mid)
        cache.expire(now)
        if key in cache:
            if message.mtype is AIO_CON:
                sent = cache[key]
                if sent is not None:
                    mm._send_initially(sent)
            return True
        shed = cache.add(key, now)
        if shed:
            shed_log.count("duplicate-cache-shed", shed)
        return False

    def store(message) -> None:
        key = (message.remote, message.mid)
        if key in cache:
            cache[key] = EncodedResponse(message) if message.mtype is not AIO_CON else message

    mm._recent_messages = cache
    mm._deduplicate_message = deduplicate
    mm._store_response_for_duplicates = store


#: aiocoap's log line for a datagram its decoder refused (one per datagram, udp6.py)
UNPARSABLE_LOG = "Ignoring unparsable message from %s"


class _LogTap:
    """Stands in for the transport's logger: swallows aiocoap's per-datagram "unparsable" line and
    notes it for the guard, which then rejects a confirmable message with RST (RFC 7252 §4.2) and
    counts it; everything else goes to the real logger."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self.seen = False

    def warning(self, msg, *args, **kwargs):
        if msg == UNPARSABLE_LOG:
            self.seen = True
            return
        self.logger.warning(msg, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.logger, name)


def _install_guard(iface, summary: _Summary) -> None:
    from aiocoap.message import Message
    from aiocoap.util.asyncio.recvmsg import RecvmsgSelectorDatagramTransport

    original = iface.datagram_msg_received
    limit = RecvmsgSelectorDatagramTransport.max_size
    note = _LogTap(iface.log)
    iface.log = note

    def send(data: bytes, address) -> None:
        try:
            iface.transport.sendmsg(data, [], 0, address)
        except OSError:
            summary.count("answer-send-failed")

    def guarded(data, ancdata, flags, address):
        if flags & socket.MSG_TRUNC:
            verdict = screen_truncated(data, limit)
        else:
            note.seen = False
            try:
                original(data, ancdata, flags, address)
                if not note.seen:
                    return None
                verdict = screen_unparsable(data)
            except Exception as e:
                try:
                    Message.decode(data)
                except Exception:
                    verdict = screen_undecodable(data, e)
                else:
                    # decoded fine: the failure was in aiocoap's dispatch, which logged it already
                    summary.count("dispatch-failed")
                    return None
        summary.count(verdict.counter)
        if verdict.answer is not None:
            send(verdict.answer, address)
        return None

    iface.datagram_msg_received = guarded


def _guarded_decoder(decode):
    from aiocoap import error

    def guarded(data):
        try:
            return decode(data)
        except error.UnparsableMessage:
            raise
        except Exception as e:  # e.g. UnicodeDecodeError of a text option
            raise error.UnparsableMessage(f"malformed option value ({type(e).__name__})") from None

    guarded.msgin5g_guarded = True
    return guarded


def install_stream_guard() -> list[str]:
    """CoAP over TCP and WebSockets (RFC 8323): make a decoding failure other than aiocoap's own
    UnparsableMessage (invalid UTF-8 in a text option) one, so that aiocoap answers it as it answers
    every malformed message on a connection — an Abort signal (7.05, RFC 8323 §5.6) with a
    diagnostic, then close — instead of a traceback from the event loop. Process-wide (the
    transports' module-level decoders); returns the transports guarded."""
    from aiocoap.transports import tcp, ws

    done = []
    for name, module in (("tcp", tcp), ("ws", ws)):
        decode = getattr(module, "_decode_message", None)
        if decode is None:
            raise RuntimeError(f"aiocoap's {name} transport has no _decode_message; cannot harden it")
        if not getattr(decode, "msgin5g_guarded", False):
            module._decode_message = _guarded_decoder(decode)
        done.append(name)
    return done


def install(ctx, *, max_exchanges: int = 100_000) -> Hardening:
    """Install the datagram guard and the bounded duplicate detection on every UDP message layer of
    the aiocoap server context ``ctx``. Raises RuntimeError when aiocoap's internals do not have the
    shape relied on (the server must not run believing it is protected)."""
    hardening = Hardening()
    shed_log = _Summary("duplicate detection full, oldest exchanges shed")
    found = False
    for mm in _message_managers(ctx):
        iface = mm.message_interface
        if not hasattr(iface, "datagram_msg_received") or not hasattr(iface, "transport"):
            continue
        from aiocoap.numbers import TransportTuning

        cache = DuplicateCache(TransportTuning().EXCHANGE_LIFETIME, max(1, max_exchanges))
        _install_cache(mm, cache, shed_log)
        _install_guard(iface, hardening.guard)
        hardening.caches.append(cache)
        found = True
    if not found:
        raise RuntimeError("aiocoap's UDP message layer has an unexpected shape; cannot harden it")
    return hardening
