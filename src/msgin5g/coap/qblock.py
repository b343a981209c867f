"""RFC 9177 Quick Block-wise transfer (Q-Block1 / Q-Block2), pure: TS 24.546 clause 5; SPEC D7 d.

The SCM-S "shall" support RFC 9177 (TS 24.546 clause 5). Over a lossy unreliable link a plain
RFC 7959 Block2 transfer costs one request per block; with Q-Block2 one request fetches the whole
body as bursts of NON responses and the client asks only for the blocks it lacks.

No sockets, clocks or codecs here: times are plain floats the caller passes in, block options
are ``(num, more, szx)`` values. The shells (``server/qblock_site.py``, the message layer's
clients) perform what these functions decide.

* Server, Q-Block2 (RFC 9177 §4.4): :func:`blocks_requested` reads a request's Q-Block2 options —
  NUM 0 with M set is "the whole body", NUM a multiple of MAX_PAYLOADS with M set is a
  "Continue", M unset asks for that one block — and :func:`bursts` cuts what is to be sent into
  sets of MAX_PAYLOADS; between sets the server waits NON_TIMEOUT unless a Continue arrives
  (§7.2).
* Client, Q-Block2: :class:`QBlock2Receiver` records the blocks it has (duplicates ignored, an
  ETag change restarts the body, §4.4), sends a Continue when a complete set ends, and after
  NON_RECEIVE_TIMEOUT without progress asks for the missing blocks — at most MAX_PAYLOADS per
  request, gaps at the end included — backing off exponentially for NON_MAX_RETRANSMIT rounds
  and giving up after NON_PARTIAL_TIMEOUT (§7.2).
* Server, Q-Block1 (RFC 9177 §4.3): :class:`QBlock1Assembler` collects a request body sent as
  blocks under one Request-Tag; it answers 2.31 Continue when a set completes, 4.08 with the
  missing block numbers (``application/missing-blocks+cbor-seq``, §5) when the last block came
  but others are missing, and 4.13 when the body is too large.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .blockwise import MAX_BODY, BlockError, BlockwiseTransfer
from .wire import block_size

#: Option numbers (RFC 9177 §4.1, IANA CoAP Option Numbers): critical, unsafe, repeatable.
Q_BLOCK1 = 19
Q_BLOCK2 = 31
#: Content-Format of a 4.08 payload listing missing blocks (RFC 9177 §5, §12.3).
CF_MISSING_BLOCKS = 272
#: Largest block number a block option can carry (20 bits, RFC 7959 §2.2).
MAX_NUM = 0xFFFFF


@dataclass(frozen=True)
class QBlockParams:
    """RFC 9177 §7.2 transmission parameters, at the RFC's defaults; each is configurable."""

    max_payloads: int = 10  # MAX_PAYLOADS: blocks sent back to back before pausing
    non_timeout: float = 2.0  # NON_TIMEOUT (s): pause between two sets without a Continue
    non_receive_timeout: float = 4.0  # NON_RECEIVE_TIMEOUT (s): silence before asking for missing blocks
    non_max_retransmit: int = 4  # NON_MAX_RETRANSMIT: rounds of asking for the same missing blocks
    non_probing_wait: float = 247.0  # NON_PROBING_WAIT (s): the longest wait between two requests for blocks
    non_partial_timeout: float = 247.0  # NON_PARTIAL_TIMEOUT (s): a partial body is dropped after this

    def __post_init__(self):
        if self.max_payloads < 1:
            raise ValueError("MAX_PAYLOADS must be at least 1")
        if min(self.non_timeout, self.non_receive_timeout, self.non_partial_timeout) <= 0:
            raise ValueError("Q-Block timers must be positive")


DEFAULT_PARAMS = QBlockParams()


@dataclass(frozen=True)
class BlockOpt:
    """One block option value (RFC 7959 §2.2): block number, more flag, size exponent."""

    num: int
    more: bool
    szx: int

    @property
    def size(self) -> int:
        return 1 << (min(self.szx, 6) + 4)


def block_count(length: int, size: int) -> int:
    """Blocks of ``size`` bytes needed for a body of ``length`` bytes (an empty body is one block)."""
    return max(1, -(-length // size))


def block_slice(body: bytes, num: int, size: int) -> tuple[bytes, bool]:
    """Block ``num`` of ``body`` and whether more follow."""
    start = num * size
    return body[start : start + size], start + size < len(body)


# -- server side, Q-Block2 ------------------------------------------------------------------------


@dataclass(frozen=True)
class Q2Request:
    """What a request's Q-Block2 options ask for (RFC 9177 §4.4).

    ``blocks``: block numbers to send, ascending, each once (the server MUST send each block once
    even when options overlap: no amplification). ``continue_from``: set when the request is a
    "Continue" (NUM a non-zero multiple of MAX_PAYLOADS with M set) — the earlier exchange may
    carry on with the next set at once. ``szx``: the size exponent the client asked for.
    """

    blocks: tuple[int, ...]
    szx: int
    continue_from: int | None = None
    whole_body: bool = False


def blocks_requested(
    options: Sequence[BlockOpt], total_blocks: int, params: QBlockParams = DEFAULT_PARAMS
) -> Q2Request:
    """The blocks a request's Q-Block2 options ask for, within ``total_blocks`` (RFC 9177 §4.4).

    * NUM 0, M set: the entire body;
    * NUM a non-zero multiple of MAX_PAYLOADS, M set: "Continue" — that block and all after it;
    * NUM not a multiple of MAX_PAYLOADS, M set: undefined, ignored;
    * M unset: just that block.
    Numbers at or beyond ``total_blocks`` are ignored. All options should use one size; the
    smallest asked for wins.
    """
    if not options:
        raise ValueError("no Q-Block2 option")
    szx = min(o.szx for o in options)
    wanted: set[int] = set()
    continue_from = None
    whole = False
    for o in options:
        if o.more:
            if o.num == 0:
                whole = True
                wanted.update(range(total_blocks))
            elif o.num % params.max_payloads == 0:
                continue_from = o.num if continue_from is None else min(continue_from, o.num)
                wanted.update(range(o.num, total_blocks))
            # otherwise undefined: MUST be ignored
        elif o.num < total_blocks:
            wanted.add(o.num)
    return Q2Request(tuple(sorted(n for n in wanted if n < total_blocks)), szx, continue_from, whole)


def bursts(blocks: Sequence[int], params: QBlockParams = DEFAULT_PARAMS) -> list[tuple[int, ...]]:
    """``blocks`` cut into the sets sent back to back (MAX_PAYLOADS each, RFC 9177 §7.2); the
    sender pauses NON_TIMEOUT between two sets unless a Continue arrives."""
    mp = params.max_payloads
    return [tuple(blocks[i : i + mp]) for i in range(0, len(blocks), mp)]


# -- client side, Q-Block2 ------------------------------------------------------------------------


@dataclass(frozen=True)
class AskBlocks:
    """Send a request for these blocks: each number as a Q-Block2 option with M unset, or, for a
    ``continue_from``, one Q-Block2 option NUM=continue_from with M set (RFC 9177 §4.4) — a
    Continue, or with 0 the whole body again (nothing arrived at all)."""

    numbers: tuple[int, ...] = ()
    continue_from: int | None = None
    szx: int = 6

    def options(self) -> list[BlockOpt]:
        if self.continue_from is not None:
            return [BlockOpt(self.continue_from, True, self.szx)]
        return [BlockOpt(n, False, self.szx) for n in self.numbers]


class QBlockFailed(Exception):
    """The body could not be completed: too many rounds, or the partial body timed out."""


@dataclass
class QBlock2Receiver:
    """Client state of one Q-Block2 body (RFC 9177 §4.4, §7.2).

    Feed every Q-Block2 response with :meth:`on_block`; call :meth:`poll` at :meth:`deadline`
    (and after each block) to learn which request to send next. :attr:`complete` says when the
    body is whole; :meth:`body` reassembles it. The bytes are kept by the message layer's one
    reassembly state, :class:`~msgin5g.coap.blockwise.BlockwiseTransfer` (out of order, ETag and
    size checked); this class adds what RFC 9177 decides: Continue, which blocks to ask for and
    when, a restart on a new ETag.
    """

    params: QBlockParams = DEFAULT_PARAMS
    send_continue: bool = True
    max_body: int = MAX_BODY
    szx: int | None = None
    received: set[int] = field(default_factory=set)  # block numbers held (at szx)
    restarts: int = 0
    duplicates: int = 0
    transfer: BlockwiseTransfer | None = None
    _last_progress: float = 0.0
    _asked: tuple[int, ...] = ()
    _asked_at: float | None = None
    _rounds: int = 0
    _continued: set[int] = field(default_factory=set)

    def start(self, now: float) -> None:
        """The first request (Q-Block2 NUM 0, M set) has just been sent."""
        self._last_progress = now

    # -- input --------------------------------------------------------------------------------------
    def on_block(
        self, now: float, opt: BlockOpt, payload: bytes, etag: bytes | None, size2: int | None = None
    ) -> str:
        """Record one block; returns ``stored``, ``duplicate``, ``restarted`` (the ETag changed:
        everything before is dropped and this block starts the new representation) or ``ignored``
        (a block that contradicts the size or the end already agreed)."""
        result = "stored"
        if self.transfer is not None and etag != self.transfer.etag:
            self._reset()
            self.restarts += 1
            result = "restarted"
        if self.transfer is None:
            self.transfer, self.szx = BlockwiseTransfer(self.max_body), opt.szx
        elif opt.szx != self.szx:
            return "ignored"
        if opt.num in self.received:
            self.duplicates += 1
            return "duplicate"
        try:
            self.transfer.add(opt.num, opt.more, opt.szx, payload, etag, size2)
        except BlockError:
            return "ignored"
        self.received.add(opt.num)
        self._last_progress = now
        self._rounds = 0 if self._asked_at is None or opt.num in self._asked else self._rounds
        return result

    def _reset(self) -> None:
        self.transfer = self.szx = None
        self.received.clear()
        self._asked, self._asked_at, self._rounds = (), None, 0
        self._continued.clear()

    # -- state --------------------------------------------------------------------------------------
    @property
    def etag(self) -> bytes | None:
        return None if self.transfer is None else self.transfer.etag

    @property
    def total(self) -> int | None:
        """Number of blocks, once known (the last block seen, or Size2)."""
        t = self.transfer
        end = None if t is None else (t.end if t.end is not None else t.size2)
        return None if end is None else block_count(end, block_size(self.szx))

    @property
    def complete(self) -> bool:
        return self.transfer is not None and self.transfer.complete

    def missing(self) -> list[int]:
        """Blocks known to be missing: every one up to the end when the end is known
        (:meth:`BlockwiseTransfer.missing`), else the gaps below the highest block seen."""
        if not self.received:
            return [0] if self.total is None else list(range(self.total))
        if self.total is not None:
            return self.transfer.missing()
        return [n for n in range(max(self.received)) if n not in self.received]

    def body(self) -> bytes:
        if not self.complete:
            raise QBlockFailed(f"body incomplete: missing blocks {self.missing()}")
        return self.transfer.body()

    # -- decisions ----------------------------------------------------------------------------------
    def deadline(self) -> float | None:
        """When :meth:`poll` next has something to decide (None once complete)."""
        if self.complete:
            return None
        base = self._asked_at if self._asked_at is not None else self._last_progress
        return min(base + self._timeout(), self._last_progress + self.params.non_partial_timeout)

    def _timeout(self) -> float:
        """NON_RECEIVE_TIMEOUT doubled per unanswered round, never beyond NON_PROBING_WAIT."""
        p = self.params
        return min(p.non_receive_timeout * (2 ** min(self._rounds, p.non_max_retransmit)), p.non_probing_wait)

    def _next_set(self) -> int | None:
        """The first block of the set to Continue with: the set before it held whole, nothing at
        or above it, more to come, no Continue sent for it yet (RFC 9177 §4.4)."""
        if not self.send_continue or not self.received:
            return None
        mp = self.params.max_payloads
        nxt = max(self.received) + 1
        if nxt % mp or nxt in self._continued or (self.total is not None and nxt >= self.total):
            return None
        return nxt if all(n in self.received for n in range(nxt - mp, nxt)) else None

    def poll(self, now: float) -> AskBlocks | None:
        """The request to send now, if any (raises :class:`QBlockFailed` when giving up)."""
        if self.complete:
            return None
        mp = self.params.max_payloads
        if now - self._last_progress >= self.params.non_partial_timeout:
            raise QBlockFailed(f"no block for {self.params.non_partial_timeout:g} s; partial body dropped")
        # a set just completed with more to come — as it arrived, or once the blocks asked for
        # filled its holes — and nothing of the next set seen: Continue at once (§4.4), once per set
        nxt = self._next_set()
        if nxt is not None:
            self._continued.add(nxt)
            if all(n in self.received for n in self._asked):  # what was asked for is in
                self._asked, self._asked_at, self._rounds = (), None, 0
            return AskBlocks(continue_from=nxt, szx=self.szx)
        # the blocks asked for last time all came: ask for the next lot now
        asked_done = self._asked_at is not None and all(n in self.received for n in self._asked)
        due = self.deadline()
        if not asked_done and (due is None or now < due):
            return None
        if self._rounds >= self.params.non_max_retransmit and not asked_done:
            raise QBlockFailed(f"blocks {list(self._asked)} still missing after {self._rounds} requests")
        if not self.received:
            self._rounds += 1
            self._asked, self._asked_at = (), now
            return AskBlocks(continue_from=0, szx=self.szx if self.szx is not None else 6)
        want = self.missing()
        # holes of the sets sent so far first: the server sends the next set by itself after
        # NON_TIMEOUT, or at once on the Continue that follows when these holes are filled
        set_end = (max(self.received) // mp + 1) * mp
        want = [n for n in want if n < set_end] or want
        if self.total is None:
            nxt = max(self.received) + 1
            if nxt not in want:
                want.append(nxt)  # the end is not known yet: ask for the next block too
        want = want[:mp]
        self._rounds = 0 if asked_done else self._rounds + 1
        self._asked, self._asked_at = tuple(want), now
        return AskBlocks(numbers=tuple(want), szx=self.szx if self.szx is not None else 6)


# -- server side, Q-Block1 ------------------------------------------------------------------------


@dataclass(frozen=True)
class Q1Outcome:
    """What to answer one Q-Block1 request (RFC 9177 §4.3):

    * ``silent`` — nothing (a NON block inside a set);
    * ``continue`` — 2.31 Continue with Q-Block1 of that block (a set of MAX_PAYLOADS is complete);
    * ``missing`` — 4.08 listing ``missing`` (the last block came, others did not);
    * ``too_large`` — 4.13 (the body would exceed the limit);
    * ``bad_size`` — 4.00 (a block with M set whose payload is not the block size);
    * ``complete`` — the whole body is in ``body``: process it and answer the request normally.
    """

    kind: str
    body: bytes = b""
    missing: tuple[int, ...] = ()


@dataclass
class _Q1Body:
    szx: int
    blocks: dict[int, bytes] = field(default_factory=dict)
    total: int | None = None
    updated: float = 0.0


class QBlock1Assembler:
    """Request bodies arriving as Q-Block1 blocks, keyed by whatever identifies one body (remote,
    Request-Tag, path — RFC 9177 §4.3: all blocks of a body carry the same Request-Tag)."""

    def __init__(self, max_body: int, params: QBlockParams = DEFAULT_PARAMS, max_bodies: int = 256):
        self.max_body, self.params, self.max_bodies = max_body, params, max_bodies
        self._bodies: dict[object, _Q1Body] = {}

    def __len__(self) -> int:
        return len(self._bodies)

    def expire(self, now: float) -> None:
        """Drop partial bodies older than NON_PARTIAL_TIMEOUT."""
        for key in [k for k, b in self._bodies.items() if now - b.updated >= self.params.non_partial_timeout]:
            del self._bodies[key]

    def on_block(
        self, now: float, key: object, opt: BlockOpt, payload: bytes, size1: int | None = None
    ) -> Q1Outcome:
        self.expire(now)
        size = opt.size
        if (size1 or 0) > self.max_body or opt.num * size + len(payload) > self.max_body:
            self._bodies.pop(key, None)
            return Q1Outcome("too_large")
        if not opt.more and opt.num == 0:
            self._bodies.pop(key, None)
            return Q1Outcome("complete", payload)
        body = self._bodies.get(key)
        if body is None or body.szx != opt.szx:
            if len(self._bodies) >= self.max_bodies:
                oldest = min(self._bodies, key=lambda k: self._bodies[k].updated)
                del self._bodies[oldest]
            body = self._bodies[key] = _Q1Body(opt.szx)
        body.updated = now
        if opt.more and len(payload) != size:
            return Q1Outcome("bad_size")
        body.blocks[opt.num] = payload
        if not opt.more:
            body.total = opt.num + 1
        if body.total is not None:
            missing = self._missing(body)
            if not missing:
                del self._bodies[key]
                return Q1Outcome("complete", b"".join(body.blocks[n] for n in range(body.total)))
            if not opt.more:
                return Q1Outcome("missing", missing=tuple(missing))
        mp = self.params.max_payloads
        first = opt.num // mp * mp
        if all(n in body.blocks for n in range(first, first + mp)):
            return Q1Outcome("continue")  # this block completed a full set of MAX_PAYLOADS
        return Q1Outcome("silent")

    @staticmethod
    def _missing(body: _Q1Body) -> list[int]:
        top = body.total if body.total is not None else (max(body.blocks) + 1 if body.blocks else 0)
        return [n for n in range(top) if n not in body.blocks]


def missing_payload(numbers: Iterable[int]) -> bytes:
    """The 4.08 payload: a CBOR Sequence of the missing block numbers (RFC 9177 §5)."""
    import cbor2

    return b"".join(cbor2.dumps(n) for n in numbers)
