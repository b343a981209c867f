"""RFC 7959 Block2 for the message layer's client requests, pure (RFC 7959 §2.4).

:class:`~msgin5g.coap.msglayer.MessageLayer` calls :func:`on_block2` for a response to a request made
``blockwise``: the blocks go into the layer's one reassembly state,
:class:`~msgin5g.coap.blockwise.BlockwiseTransfer`, each next block is asked for with a new message ID
and token, and the whole body comes back with block 0's options. (Request bodies of several blocks:
:mod:`.qblock1_client`.)
"""

from __future__ import annotations

from . import wire
from .blockwise import BlockError, BlockwiseTransfer
from .wire import OPT_BLOCK2, OPT_ETAG, OPT_OBSERVE, OPT_SIZE2, CoapMessage


def on_block2(layer, now: float, ex, msg: CoapMessage, out: list) -> CoapMessage | None:
    """The response to deliver (``msg`` itself, or the whole body once its last block came), or
    None when the exchange goes on (the next block asked for) or failed."""
    block = msg.first(OPT_BLOCK2) if ex.blockwise and 64 <= msg.code < 96 else None
    if block is None:
        return msg
    try:
        num, more, szx = wire.parse_block(block)
        if ex.transfer is None:
            ex.transfer = BlockwiseTransfer(layer.params.max_body)
            ex.first = msg
        ex.transfer.add(num, more, szx, msg.payload, msg.first(OPT_ETAG), msg.uint(OPT_SIZE2))
    except (wire.WireError, BlockError) as e:
        layer._fail(ex, f"block-wise transfer failed: {e}", out)
        return None
    nxt = ex.transfer.next_block()
    if nxt is not None:  # ask for the next block with a new MID and token (RFC 7959 §2.4)
        opts = ex.msg.without(OPT_BLOCK2, OPT_OBSERVE)
        opts.append((OPT_BLOCK2, wire.block_option(nxt, False, ex.transfer.szx)))
        layer._resend(now, ex, out, opts)
        return None
    first = ex.first
    return CoapMessage(msg.mtype, msg.code, msg.mid, msg.token, first.without(OPT_BLOCK2), ex.transfer.body())
