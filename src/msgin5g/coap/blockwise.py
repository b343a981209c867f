"""Block-wise transfers of one representation (RFC 7959 §2; the seam for RFC 9177 Q-Block2).

Pure. :class:`BlockwiseTransfer` is the client's reassembly state for one Block2 body: it knows
which byte ranges it holds, checks that every block belongs to the same representation (ETag,
RFC 7959 §2.4) and fits (block size, end of body), and says which blocks are still missing.
An RFC 7959 client asks for :meth:`BlockwiseTransfer.next_block` one request at a time; a
Q-Block2 client (RFC 9177 §4.4) asks for :meth:`BlockwiseTransfer.missing` in one request and
feeds every block that arrives, in any order, to the same :meth:`BlockwiseTransfer.add`.

:func:`slice_block2` is the server's side: the block ``num`` of a body; :func:`block2_of` the
response a request asks for.
"""

from __future__ import annotations

from . import wire
from .wire import MAX_SZX, block_size

BAD_OPTION = 0x82  # 4.02 (RFC 7252 §5.9.2.4)
#: the largest body a client reassembles (a cap against a peer that never sends the last block)
MAX_BODY = 1 << 20


class BlockError(ValueError):
    """A block that cannot belong to the transfer (another representation, wrong size, past the end)."""


class BlockwiseTransfer:
    """Client-side reassembly of one Block2 body (RFC 7959 §2.4).

    Blocks are kept by byte offset, so a server answering later blocks with a smaller size
    (RFC 7959 §2.2 lets it) still reassembles; they may arrive in any order (RFC 9177).
    """

    __slots__ = ("_parts", "_started", "end", "etag", "max_body", "size2", "szx")

    def __init__(self, max_body: int = MAX_BODY):
        self.max_body = max_body
        self._parts: dict[int, bytes] = {}
        self._started = False
        self.etag: bytes | None = None
        self.szx = MAX_SZX
        self.end: int | None = None  # the body length, once the last block (M=0) came
        self.size2: int | None = None  # the server's size indication (RFC 7959 §4), if any

    def add(
        self, num: int, more: bool, szx: int, payload: bytes, etag: bytes | None, size2: int | None = None
    ) -> None:
        """Take one block (RFC 7959 §2.2 fields, the response's ETag and Size2); BlockError when it
        cannot be part of this transfer."""
        if not self._started:
            self._started = True
            self.etag = etag
            self.szx = szx
        elif etag != self.etag:
            raise BlockError("the representation changed during the block-wise transfer (ETag differs)")
        size = block_size(szx)
        offset = num * size
        if more and len(payload) != size:
            raise BlockError(f"block {num} has {len(payload)} bytes, not {size}, and is not the last")
        if not more and len(payload) > size:
            raise BlockError(f"block {num} has {len(payload)} bytes, more than its size {size}")
        stop = offset + len(payload)
        if stop > self.max_body:
            raise BlockError(f"body larger than {self.max_body} bytes")
        if self.end is not None and (stop > self.end or (more and stop >= self.end)):
            raise BlockError(f"block {num} lies past the end of the body ({self.end} bytes)")
        if not more:
            if any(o + len(p) > stop for o, p in self._parts.items()):
                raise BlockError(f"block {num} says the body ends at {stop}, but more was received")
            self.end = stop
        if size2 is not None:
            self.size2 = size2
        self.szx = min(self.szx, szx)
        self._parts[offset] = payload

    def _covered(self) -> int:
        """Bytes held contiguously from the start."""
        pos = 0
        for offset in sorted(self._parts):
            if offset > pos:
                break
            pos = max(pos, offset + len(self._parts[offset]))
        return pos

    @property
    def complete(self) -> bool:
        return self.end is not None and self._covered() >= self.end

    def next_block(self) -> int | None:
        """The block number (at :attr:`szx`) to ask for next (RFC 7959), None when complete."""
        if self.complete:
            return None
        return self._covered() // block_size(self.szx)

    def missing(self) -> list[int]:
        """Every block number (at :attr:`szx`) not yet held up to the known end — what a Q-Block2
        client asks for in one request (RFC 9177 §4.4). Only the next one while the end is unknown."""
        size = block_size(self.szx)
        end = self.end if self.end is not None else self.size2
        if end is None:
            nxt = self.next_block()
            return [] if nxt is None else [nxt]
        spans: list[list[int]] = []
        for offset in sorted(self._parts):
            stop = offset + len(self._parts[offset])
            if spans and offset <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], stop)
            else:
                spans.append([offset, stop])

        def held(n: int) -> bool:
            a, b = n * size, min((n + 1) * size, end)
            return any(s <= a and b <= e for s, e in spans)

        return [n for n in range(-(-end // size)) if not held(n)]

    def body(self) -> bytes:
        """The reassembled body (only when :attr:`complete`)."""
        if not self.complete:
            raise BlockError("the transfer is not complete")
        out = bytearray()
        for offset in sorted(self._parts):
            part = self._parts[offset]
            if offset + len(part) > len(out):
                out += part[len(out) - offset :]
        return bytes(out)


def slice_block2(payload: bytes, num: int, szx: int) -> tuple[bytes, bool] | None:
    """Block ``num`` of ``payload`` at size ``2**(szx+4)`` and whether more follow (RFC 7959 §2.2);
    None for a block past the end (the empty body has one empty block 0)."""
    size = block_size(szx)
    start = num * size
    if start >= len(payload) and not (num == 0 and not payload):
        return None
    return payload[start : start + size], start + size < len(payload)


def block2_of(request: wire.CoapMessage, response: wire.CoapMessage, max_szx: int) -> wire.CoapMessage:
    """The Block2 block of ``response`` that ``request`` asks for (RFC 7959 §2.3, §2.4): the whole
    response when it fits one block of ``max_szx`` and no block was asked for; 4.02 for a bad
    Block2 option or a block past the end."""
    num, szx = 0, max_szx
    value = request.first(wire.OPT_BLOCK2)
    if value is not None:
        try:
            num, _, want = wire.parse_block(value)
            szx = min(szx, want)
        except wire.WireError as e:
            return wire.CoapMessage(wire.ACK, BAD_OPTION, 0, b"", [], str(e).encode())
    elif len(response.payload) <= block_size(szx):
        return response
    piece = slice_block2(response.payload, num, szx)
    if piece is None:
        return wire.CoapMessage(wire.ACK, BAD_OPTION, 0, b"", [], f"block {num} is past the end".encode())
    payload, more = piece
    opts = [o for o in response.options if o[0] not in (wire.OPT_BLOCK2, wire.OPT_SIZE2)]
    opts.append((wire.OPT_BLOCK2, wire.block_option(num, more, szx)))
    if num == 0:
        opts.append((wire.OPT_SIZE2, wire.uint_bytes(len(response.payload))))
    return wire.CoapMessage(response.mtype, response.code, 0, b"", opts, payload)
