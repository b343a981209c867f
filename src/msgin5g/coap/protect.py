"""End-to-end protection of the message layer's client requests (OSCORE, RFC 8613 §8.1, §8.4), pure.

The layer calls these at two seams when a request was made with ``protection=``
(:class:`~msgin5g.coap.actions.Protection`): :func:`outgoing` for each request of the exchange that
goes out with a new token (the first, a retry without Q-Block2, an RFC 7959 follow-up, an RFC 9177
request for missing blocks), :func:`verified` for each response before block-wise handling, so
Block2/Q-Block2 run on the plain messages (inner options, RFC 8613 §4.1.3.4) and every block
response is verified on its own.
"""

from __future__ import annotations

from . import wire
from .actions import Counters, NotProtected, ProtectionFailed
from .wire import CoapMessage


def outgoing(ex, msg: CoapMessage) -> bytes:
    """The datagram of the plain request ``msg`` (type, MID and token set) of exchange ``ex``; the
    binding its responses are verified with is kept under its token."""
    outer, ex.bindings[msg.token] = ex.prot.protect(msg)
    return wire.encode(CoapMessage(msg.mtype, outer.code, msg.mid, msg.token, outer.options, outer.payload))


def verified(counters: Counters, ex, msg: CoapMessage) -> CoapMessage | None:
    """The plain response of exchange ``ex`` (RFC 8613 §8.4), or None to drop it as if lost: it
    fails verification (counted), or it is unprotected and not an error. An unprotected error
    response is the server's refusal (e.g. 4.01 to unknown credentials): the answer, as it is."""
    binding = ex.bindings.get(msg.token)
    try:
        if binding is None:
            raise ProtectionFailed("no request with this token")
        plain = ex.prot.verify(msg, binding)
    except NotProtected:
        return msg if msg.code >= 128 else None
    except ProtectionFailed:
        counters.unverified += 1
        return None
    return CoapMessage(msg.mtype, plain.code, msg.mid, msg.token, plain.options, plain.payload)
