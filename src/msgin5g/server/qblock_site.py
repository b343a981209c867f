"""RFC 9177 on the SCM-S: Q-Block2 bursts and Q-Block1 bodies over aiocoap (TS 24.546 clause 5; SPEC D7 d).

The shell around :mod:`msgin5g.coap.qblock`: it turns a request's Q-Block options into the pure
core's values, renders the full answer once through the site (a bulk answer comes from the one
kept for its bulk configuration id, SPEC D6/D7 b; listings and individual documents are
rendered again, their ETag showing whether they changed), and sends what the core decides.

Several responses on one token use aiocoap's public pipe interface: every response but the last
is added with ``is_last=False`` (the mechanism aiocoap's observations use), the first may be
piggybacked on the ACK of a confirmable request and the others go as NON. Over OSCORE each block
response goes through aiocoap's OSCORE site wrapper on its own, so each is protected separately
with its own partial IV (RFC 8613 §7.1); that wrapper marks responses that are not the last with
an Observe option, which a Q-Block2 client ignores. (With a confirmable request over OSCORE the
outer messages after the first are confirmable: send Q-Block2 requests as NON there.)

A Continue (Q-Block2 NUM = k·MAX_PAYLOADS with M set) wakes the exchange that waits NON_TIMEOUT
before its next set, which then sends that set at once on its own token (the Continue itself is
acknowledged, never answered twice); without a waiting exchange it is served like a request for
those blocks.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.numbers.types import NON
from aiocoap.optiontypes import BlockOption

from ..coap.qblock import (
    CF_MISSING_BLOCKS,
    BlockOpt,
    QBlock1Assembler,
    QBlockParams,
    block_count,
    blocks_requested,
    bursts,
    missing_payload,
)
from ..problem import Problem, ProblemError

log = logging.getLogger("msgin5g.server")

Q_BLOCK1, Q_BLOCK2 = OptionNumber.Q_BLOCK1, OptionNumber.Q_BLOCK2
#: No-Response (RFC 7967) value suppressing every response class: a request that needs no answer
#: of its own (a Q-Block1 block inside a set, a Continue) gets only the ACK a CON needs.
SUPPRESS_ALL = 2 | 8 | 16
#: Options of the full answer repeated in every block response.
_KEPT = ("content_format", "etag", "max_age", "location_path")


def block_options(request: Message, number: OptionNumber) -> list[BlockOpt]:
    """A request's Q-Block1 or Q-Block2 options as block values (aiocoap treats them as opaque)."""
    out = []
    for o in request.opt.get_option(number):
        raw = o.value if isinstance(o.value, bytes) else o.encode()
        if len(raw) > 3:
            raise ProblemError(Problem(0x82, f"option {int(number)} longer than 3 bytes", "BAD_OPTION"))
        b = BlockOption(number)
        b.decode(raw)
        v = b.value
        if v.size_exponent == 7:
            raise ProblemError(Problem(0x82, "BERT is not used with Q-Block over UDP", "BAD_OPTION"))
        out.append(BlockOpt(v.block_number, bool(v.more), v.size_exponent))
    return out


def has_qblock(request: Message) -> bool:
    return bool(request.opt.get_option(Q_BLOCK2) or request.opt.get_option(Q_BLOCK1))


def _reliable(request: Message) -> bool:
    remote = request.remote
    under = getattr(remote, "underlying_address", None) or remote
    return getattr(under, "scheme", "coap") not in ("coap", "coaps")


class QBlockServer:
    """Q-Block2/Q-Block1 for one site. ``render`` gives the complete answer to a request (no
    block slicing); ``limits`` gives (largest payload, largest size exponent) towards a remote."""

    def __init__(
        self,
        render: Callable[[Message], Awaitable[Message]],
        limits: Callable[[object], tuple[int, int]],
        max_body: int,
        params: QBlockParams | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.render, self.limits = render, limits
        self.params = params or QBlockParams()
        self.clock = clock
        self.q1 = QBlock1Assembler(max_body, self.params)
        self._waiting: dict[tuple, asyncio.Event] = {}
        #: answers to complete Q-Block1 bodies, by body key: (when, body, answer) — a late copy of
        #: one of the body's blocks, or the last block naming missing Q-Block2 blocks of the answer
        #: (RFC 9177 §4.4), is answered from here, never processed again (a POST stays one POST)
        self._answered: OrderedDict[tuple, tuple[float, bytes, Message]] = OrderedDict()
        self.counters = {
            "qblock2-requests": 0,
            "qblock2-blocks": 0,
            "qblock2-continues": 0,
            "qblock1-blocks": 0,
        }

    async def render_to_pipe(self, pipe) -> None:
        request = pipe.request
        if request.opt.get_option(Q_BLOCK1):
            await self._qblock1(pipe)
            return
        if request.opt.block2 is not None:
            raise ProblemError(Problem(0x80, "Block2 and Q-Block2 cannot be in one request", "BAD_OPTION"))
        options = block_options(request, Q_BLOCK2)
        full = await self.render(request)
        await self._serve(pipe, full, options)

    # -- Q-Block2 ---------------------------------------------------------------------------------------
    async def _serve(self, pipe, full: Message, options: list[BlockOpt]) -> None:
        request = pipe.request
        max_payload, max_szx = self.limits(request.remote)
        szx = min([o.szx for o in options] + [max_szx, 6])
        size = 1 << (szx + 4)
        if full.code != Code.CONTENT and not (full.code.is_successful() and full.payload):
            pipe.add_response(full, is_last=True)  # errors, 2.03 Valid, empty answers: one message
            return
        if len(full.payload) <= min(size, max_payload) and options[0].num == 0:
            pipe.add_response(full, is_last=True)  # fits one message: no block option needed
            return
        if _reliable(request):
            # RFC 9177 is for unreliable transports; over TCP/WebSockets serve as RFC 7959 would:
            # the whole answer in one (BERT-sized) message when it fits, else the first block
            whole = len(full.payload) <= max_payload
            pipe.add_response(full if whole else self._block(full, 0, szx, size), is_last=True)
            return
        etag = full.opt.etag or hashlib.blake2b(full.payload, digest_size=8).digest()
        full.opt.etag = etag
        total = block_count(len(full.payload), size)
        wanted = blocks_requested(options, total, self.params)
        self.counters["qblock2-requests"] += 1
        key = (request.remote.hostinfo, request.opt.uri_path, etag)
        if wanted.continue_from is not None:
            self.counters["qblock2-continues"] += 1
            waiter = self._waiting.get(key)
            if waiter is not None:
                waiter.set()  # the exchange waiting NON_TIMEOUT sends its next set now
                pipe.add_response(Message(code=Code.CONTENT, no_response=SUPPRESS_ALL), is_last=True)
                return
        if not wanted.blocks:
            pipe.add_response(Message(code=Code.CONTENT, no_response=SUPPRESS_ALL), is_last=True)
            return
        sets = bursts(wanted.blocks, self.params)
        for i, burst in enumerate(sets):
            if i:
                await self._pause(key)
            for n in burst:
                last = i == len(sets) - 1 and n == burst[-1]
                self.counters["qblock2-blocks"] += 1
                pipe.add_response(self._block(full, n, szx, size, qblock=True), is_last=last)

    async def _pause(self, key: tuple) -> None:
        """NON_TIMEOUT between two sets, cut short by a Continue (RFC 9177 §7.2)."""
        event = self._waiting[key] = asyncio.Event()
        try:
            await asyncio.wait_for(event.wait(), self.params.non_timeout)
        except TimeoutError:
            pass
        finally:
            if self._waiting.get(key) is event:
                del self._waiting[key]

    @staticmethod
    def _block(full: Message, num: int, szx: int, size: int, qblock: bool = False) -> Message:
        start = num * size
        chunk = full.payload[start : start + size]
        more = start + size < len(full.payload)
        m = Message(code=full.code, payload=chunk)
        m.mtype = NON
        for name in _KEPT:
            value = getattr(full.opt, name)
            if value is not None:
                setattr(m.opt, name, value)
        if qblock:
            m.opt.add_option(BlockOption(Q_BLOCK2, value=(num, more, szx)))
            m.opt.size2 = len(full.payload)  # every block: the client knows the end even if block 0 is lost
        else:
            m.mtype = None
            m.opt.block2 = (num, more, szx)
            if num == 0:
                m.opt.size2 = len(full.payload)
        return m

    # -- Q-Block1 ---------------------------------------------------------------------------------------
    async def _qblock1(self, pipe) -> None:
        request = pipe.request
        if request.opt.block1 is not None:
            raise ProblemError(Problem(0x82, "Block1 and Q-Block1 cannot be in one request", "BAD_OPTION"))
        (opt, *rest) = block_options(request, Q_BLOCK1)
        if rest:
            raise ProblemError(Problem(0x82, "Q-Block1 is not repeatable in a request", "BAD_OPTION"))
        self.counters["qblock1-blocks"] += 1
        tag = request.opt.request_tag[0] if request.opt.request_tag else b""
        key = (request.remote.hostinfo, request.code, request.opt.uri_path, tuple(request.opt.uri_query), tag)
        now = self.clock()
        kept = self._kept(now, key, opt, request.payload) if tag else None
        if kept is not None:
            await self._serve(pipe, kept, block_options(request, Q_BLOCK2) or [BlockOpt(0, True, opt.szx)])
            return
        out = self.q1.on_block(now, key, opt, request.payload, request.opt.size1)
        if out.kind == "silent":
            pipe.add_response(Message(code=Code.CONTINUE, no_response=SUPPRESS_ALL), is_last=True)
        elif out.kind == "continue":
            m = Message(code=Code.CONTINUE)
            m.opt.add_option(BlockOption(Q_BLOCK1, value=(opt.num, opt.more, opt.szx)))
            pipe.add_response(m, is_last=True)
        elif out.kind == "missing":
            m = Message(code=Code.REQUEST_ENTITY_INCOMPLETE, payload=missing_payload(out.missing))
            m.opt.content_format = CF_MISSING_BLOCKS
            pipe.add_response(m, is_last=True)
        elif out.kind == "too_large":
            limit = self.q1.max_body
            raise ProblemError(
                Problem(
                    0x8D, f"body exceeds the limit of {limit} bytes", "BODY_TOO_LARGE", extra={"size1": limit}
                )
            )
        elif out.kind == "bad_size":
            raise ProblemError(
                Problem(0x80, "a Q-Block1 block with M set must fill its block size", "BAD_BLOCK")
            )
        else:
            whole = request.copy(payload=out.body)
            whole.opt.delete_option(Q_BLOCK1)
            whole.opt.size1 = None
            full = await self.render(whole)
            if tag and opt.num:
                self._answered[key] = (now, out.body, full)
                while len(self._answered) > self.q1.max_bodies:
                    self._answered.popitem(last=False)
            options = block_options(request, Q_BLOCK2) or [BlockOpt(0, True, opt.szx)]
            await self._serve(pipe, full, options)

    def _kept(self, now: float, key: tuple, opt: BlockOpt, payload: bytes) -> Message | None:
        """The answer kept for the body ``key`` when this block is one of that body's."""
        entry = self._answered.get(key)
        if entry is None:
            return None
        at, body, full = entry
        if now - at >= self.params.non_partial_timeout:
            del self._answered[key]
            return None
        start = opt.num * opt.size
        return full if body[start : start + opt.size] == payload else None
