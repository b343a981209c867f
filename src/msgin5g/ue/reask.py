"""When a constrained UE asks again on a lossy link, pure (RFC 7252 §4.2, §4.8, §5.2.2; SPEC D13).

A UE on a lossy radio link sends its request as a confirmable message with RFC 7252's
exponential back-off (ACK_TIMEOUT 2 s, ACK_RANDOM_FACTOR 1.5, MAX_RETRANSMIT 4: five copies within
MAX_TRANSMIT_SPAN, 45 s). Before, the demo's UE then waited out a fixed 48 s per attempt, tore its
PC5 link down, paused, set up a new link and started over. The cycle here:

* **One exchange** is RFC 7252's: the same message ID retransmitted with the doubling timeout.
  After its *last* retransmission the UE waits :attr:`ReaskPolicy.give_up_wait` (the longest
  first timeout, ACK_TIMEOUT x ACK_RANDOM_FACTOR = 3 s) instead of 16 x the first timeout: a
  sender "MAY give up ... even before the MAX_RETRANSMIT counter value is reached" (§4.2), and on a
  link whose round trip is far below ACK_TIMEOUT the answer to the last copy is as quick as the
  answer to the first (:attr:`msgin5g.coap.msglayer.Params.give_up_wait`).
* **Ask again at once**, with a new exchange (new message ID and token; with OSCORE a newly
  protected request), on the same PC5 link — when the exchange gave up, or when its answer was
  announced by an empty ACK and the separate response did not come within
  :attr:`ReaskPolicy.separate_wait` more (§5.2.2: the server retransmits a CON separate response
  itself, but it may give up, or the client may have missed every copy). A GET is safe to
  repeat: the SCM-S answers it again; a Gateway UE takes the repeat as superseding the stored
  request (SPEC D13).
* **A proxy's 5.04 Gateway Timeout** (the Relay UE, which ends the UE's exchange on PC5 with an
  empty ACK and retransmits on Uu itself, got no answer from the SCM-S, RFC 7252 §5.7.1) is a lost
  exchange too: asked again at once (:func:`proxy_timed_out`).
* **Never ask again** after an answer, an RST (the peer rejected the message), or a failed
  block-wise transfer: those are outcomes, not losses.

Everything is bounded by the caller's overall timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..coap.actions import ACK_RANDOM_FACTOR, ACK_TIMEOUT, DEADLINE, GAVE_UP, MAX_RETRANSMIT

#: a proxy on the path — the Relay UE, which ends the UE's CON exchange on PC5 and retransmits on
#: Uu itself (SPEC D8) — got no answer from the origin in time: 5.04 Gateway Timeout (RFC 7252
#: §5.7.1, §5.9.3.5). For the UE that is a lost exchange like any other.
PROXY_TIMEOUT = "proxy-timeout"
GATEWAY_TIMEOUT = 0xA4  # 5.04

#: causes of a failed exchange (:attr:`msgin5g.coap.udp.CoapError.cause`) after which a UE asks again
LOST = frozenset({GAVE_UP, DEADLINE, PROXY_TIMEOUT})


def proxy_timed_out(code: int, protected: bool) -> bool:
    """An answer that is a proxy's 5.04 Gateway Timeout (RFC 7252 §5.7.1): the origin was not
    reached in time, so the exchange is lost, not answered. An OSCORE-protected 5.04 comes from the
    origin itself (a proxy cannot protect) and is the answer."""
    return code == GATEWAY_TIMEOUT and not protected


@dataclass(frozen=True)
class ReaskPolicy:
    """RFC 7252 §4.8 transmission parameters of the UE and what it does when an exchange is lost."""

    ack_timeout: float = ACK_TIMEOUT
    ack_random_factor: float = ACK_RANDOM_FACTOR
    max_retransmit: int = MAX_RETRANSMIT
    #: s after the last retransmission before the exchange is given up (None: RFC 7252's doubled timeout)
    give_up_wait: float | None = ACK_TIMEOUT * ACK_RANDOM_FACTOR
    #: s more to wait for a separate response once the request was acknowledged with an empty ACK
    #: (the server retransmits it itself; a Gateway UE answers after its batch and its Uu leg)
    separate_wait: float = 30.0

    def __post_init__(self) -> None:
        if (
            self.ack_timeout <= 0
            or self.ack_random_factor < 1
            or self.max_retransmit < 0
            or self.separate_wait < 0
        ):
            raise ValueError("ACK_TIMEOUT > 0, ACK_RANDOM_FACTOR >= 1 and MAX_RETRANSMIT >= 0 are required")

    @property
    def max_transmit_span(self) -> float:
        """RFC 7252 §4.8.2: the longest time from the first to the last transmission of a CON."""
        return self.ack_timeout * (2**self.max_retransmit - 1) * self.ack_random_factor

    @property
    def transmit_window(self) -> float:
        """Every transmission of a CON and the wait after the last one: an exchange without an
        acknowledgement by then is given up by the message layer."""
        last = self.give_up_wait
        if last is None:
            last = self.ack_timeout * self.ack_random_factor * 2**self.max_retransmit
        return self.max_transmit_span + last

    @property
    def exchange_window(self) -> float:
        """How long one exchange may last: the transmit window, and the wait for a separate
        response after an empty ACK (RFC 7252 §5.2.2); an exchange not answered by then is lost."""
        return self.transmit_window + self.separate_wait


def exchange_timeout(policy: ReaskPolicy, remaining: float) -> float | None:
    """The timeout of the next exchange, or None when no time is left for one."""
    if remaining <= 0:
        return None
    return min(policy.exchange_window, remaining)


def ask_again(cause: str, remaining: float) -> bool:
    """After an exchange failed with ``cause``: ask again with a new exchange? Only for a loss
    (no acknowledgement after the last retransmission, no separate response in time) and only
    while time is left."""
    return cause in LOST and remaining > 0
