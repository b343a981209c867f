"""RFC 9177 Q-Block1 on the client side, pure: sending a large request body (TS 24.546 clause 5; SPEC D7 d).

The server half is :class:`~msgin5g.coap.qblock.QBlock1Assembler`; this is the sender's. No
sockets, no clock: times are floats the caller passes in, and every decision is a list of block
numbers to send now. The message layer's shell is :mod:`msgin5g.coap.qblock1_client`.

How a body goes (RFC 9177 §4.3, §7.2):

* block 0 goes alone, confirmable (:meth:`QBlock1Sender.first`): its answer says whether the
  server does RFC 9177 at all — a 4.02 Bad Option means it does not (§4.1; the caller falls back
  to RFC 7959 Block1), an empty ACK or a 2.31 Continue means it took the block;
* then the rest of the first set of MAX_PAYLOADS blocks as a burst (:meth:`on_accepted`); each
  further set goes as soon as a 2.31 Continue for the set before arrives (:meth:`on_continue`),
  or after NON_TIMEOUT without one (:meth:`poll`);
* a 4.08 Request Entity Incomplete lists the blocks the server lacks (§5): only those are sent
  again, MAX_PAYLOADS at a time (:meth:`on_missing`);
* silence after everything went out: the last block (M unset) goes again, so that the server
  answers — the final response, or a 4.08 with what it still lacks; the wait doubles each
  round, and after NON_MAX_RETRANSMIT rounds without progress the body is given up
  (:class:`~msgin5g.coap.qblock.QBlockFailed`).

Any other response to any block ends the body: it is the answer to the whole request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .qblock import DEFAULT_PARAMS, QBlockFailed, QBlockParams, block_count
from .wire import block_size


def missing_numbers(payload: bytes) -> list[int]:
    """The block numbers of a 4.08 payload: a CBOR Sequence of unsigned integers (RFC 9177 §5).
    Raises ValueError when it is anything else."""
    import io

    import cbor2

    out, stream = [], io.BytesIO(payload)
    decoder = cbor2.CBORDecoder(stream)
    while stream.tell() < len(payload):
        try:
            n = decoder.decode()
        except cbor2.CBORDecodeError as e:
            raise ValueError(f"not a CBOR sequence: {e}") from None
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"not a block number: {n!r}")
        out.append(n)
    return out


@dataclass
class QBlock1Sender:
    """Sender state of one Q-Block1 request body (RFC 9177 §4.3, §7.2); see the module docstring."""

    body: bytes
    szx: int = 6
    params: QBlockParams = DEFAULT_PARAMS
    accepted: bool = False  # the server took block 0 (an ACK, a Continue or a 4.08): it does RFC 9177
    sent: int = 0  # block datagrams sent, repeats included
    next_new: int = 0  # the lowest block never sent
    resend: list[int] = field(default_factory=list)  # blocks the server lacks, not yet sent again
    _at: float = 0.0  # when the last burst went out
    _rounds: int = 0  # bursts since the last progress

    def __post_init__(self):
        if len(self.body) <= self.size:
            raise ValueError("a body of one block needs no Q-Block1")

    @property
    def size(self) -> int:
        return block_size(self.szx)

    @property
    def total(self) -> int:
        return block_count(len(self.body), self.size)

    def block(self, num: int) -> tuple[bytes, bool]:
        """Block ``num``'s payload and whether more follow (M)."""
        start = num * self.size
        return self.body[start : start + self.size], start + self.size < len(self.body)

    # -- decisions ------------------------------------------------------------------------------------
    def _burst(self, now: float, blocks: list[int]) -> list[int]:
        self._at = now
        self.sent += len(blocks)
        return blocks

    def first(self, now: float) -> list[int]:
        """Block 0, sent confirmable on its own: its answer shows whether the server does RFC 9177."""
        self.next_new = 1
        return self._burst(now, [0])

    def _next_set(self, now: float) -> list[int]:
        mp = self.params.max_payloads
        end = min(self.total, (self.next_new // mp + 1) * mp)
        blocks = list(range(self.next_new, end))
        self.next_new = end
        return self._burst(now, blocks)

    def _next_lot(self, now: float) -> list[int]:
        mp = self.params.max_payloads
        lot, self.resend = self.resend[:mp], self.resend[mp:]
        return self._burst(now, lot)

    def on_accepted(self, now: float) -> list[int]:
        """Block 0 was acknowledged without an answer of its own (a block inside a set, §4.3):
        the rest of the first set goes now."""
        if self.accepted:
            return []
        self.accepted, self._rounds = True, 0
        return self._next_set(now)

    def on_continue(self, now: float, num: int) -> list[int]:
        """2.31 Continue with Q-Block1 ``num``: the set holding ``num`` is whole at the server
        (§4.3). The next set goes now — or, once everything went, the next lot of blocks the
        server lacks. A Continue for a set before the last one sent changes nothing."""
        self.accepted, self._rounds = True, 0
        mp = self.params.max_payloads
        if self.next_new < self.total:
            return self._next_set(now) if num // mp == (self.next_new - 1) // mp else []
        return self._next_lot(now) if self.resend else []

    def on_missing(self, now: float, numbers: list[int]) -> list[int]:
        """4.08 listing ``numbers`` (§4.3, §5): those go again, MAX_PAYLOADS at a time; numbers
        beyond the body are ignored. Raises QBlockFailed when the list names none of the body."""
        wanted = sorted({n for n in numbers if 0 <= n < self.total})
        if not wanted:
            raise QBlockFailed(f"4.08 names no block of the body ({numbers[:8]})")
        progress = not self.accepted or self.resend != wanted
        self.accepted = True
        self._rounds = 0 if progress else self._rounds
        self.resend = wanted
        return self._next_lot(now)

    def deadline(self) -> float:
        """When :meth:`poll` next has something to do: NON_TIMEOUT after the last burst while sets
        remain, else that wait doubled per unanswered round (at most NON_PROBING_WAIT)."""
        p = self.params
        if self.next_new < self.total or self.resend:
            return self._at + p.non_timeout
        return self._at + min(p.non_timeout * 2**self._rounds, p.non_probing_wait)

    def poll(self, now: float) -> list[int]:
        """The blocks to send now: the next set after NON_TIMEOUT without a Continue, the next lot
        of blocks the server lacks, or the last block again when nothing came back (raises
        QBlockFailed after NON_MAX_RETRANSMIT such rounds)."""
        if now < self.deadline():
            return []
        if not self.accepted:
            return []  # block 0 is the message layer's own CON: RFC 7252 retransmits it
        if self.next_new < self.total:
            return self._next_set(now)
        if self.resend:
            return self._next_lot(now)
        if self._rounds >= self.params.non_max_retransmit:
            raise QBlockFailed(f"no answer to the body's last block after {self._rounds} tries")
        self._rounds += 1
        return self._burst(now, [self.total - 1])
