"""Round-trip estimation for confirmable messages, pure (RFC 6298 §2, §3; RFC 7252 §4.8, §4.8.1).

RFC 7252's ACK_TIMEOUT of 2 s is the default for a path whose round trip is *unknown*; its §4.8
lets an application environment use "dynamically adjusted values". On the radio legs of this
project the round trip becomes known after one exchange: a Relay UE talks to one SCM-S all day and
to each remote UE at least once, a Gateway UE to its constrained UEs, a UE to the relay whose link
it just set up. Every one of those timeouts doubled, four times over at worst, is what a lossy link
costs (issue 10: a UE's tail at 20-30 % loss is ACK_TIMEOUT x 2^k, for the k losses in a row).

So a CON's first timeout is the peer's retransmission timeout as TCP computes it (RFC 6298 §2):

* the first sample R: SRTT = R, RTTVAR = R/2; each later one R': RTTVAR = 3/4 RTTVAR + 1/4
  |SRTT - R'|, SRTT = 7/8 SRTT + 1/8 R';
* RTO = SRTT + max(G, 4 RTTVAR), never below MIN_RTO (1 s, §2.4) and — unlike TCP — never above
  ACK_TIMEOUT: the estimate only ever *shortens* RFC 7252's first timeout, on a path shown to be
  fast. A sample includes the time the peer took to answer, and under a burst of load (a fleet
  asking at once) it can be seconds: an RTO grown from those would leave a lost datagram
  unrepeated for 10-30 s, far longer than RFC 7252's defaults (measured: two relay UEs waited 30 s
  for an answer the relay retransmitted only after a 9 s RTO). RFC 7252's randomisation
  (x [1, ACK_RANDOM_FACTOR]) and doubling stay as they are;
* Karn's rule (§3): only a message that went once and was acknowledged gives a sample — after a
  retransmission nobody knows which copy the acknowledgement answers.

A peer without samples of its own starts from the estimate of the *link*, the samples of every peer
of this endpoint (all are one radio hop away on the same leg: the PC5 side of a Relay UE, the
MSGin5G-6 side of a Gateway UE); without any sample at all, from ACK_TIMEOUT. An estimate not
refreshed for :data:`STALE_AFTER` is forgotten (the path may have changed; CoCoA ages its RTOs for
the same reason). Peers are bounded (least recently sampled forgotten first): a gateway meets a
million UEs. Nothing here sends or sleeps; callers pass the clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

MIN_RTO = 1.0  # RFC 6298 §2.4
ALPHA, BETA, K = 1 / 8, 1 / 4, 4  # RFC 6298 §2.3
GRANULARITY = 0.001  # G: the clock's granularity (s)
STALE_AFTER = 300.0  # s without a sample after which an estimate is forgotten
PEER_BOUND = 4096  # peers with an estimate of their own
#: timeouts in a row, with no sample in between, after which a path's RTO is doubled (RFC 6298 §5.5):
#: at 30 % loss each way a first transmission goes unanswered half the time, so eight in a row
#: happen by chance 0.4 % of the time (three: 13 %), while a path slower than its RTO, where every
#: CON times out, reaches eight after eight CONs
MISSES_BEFORE_BACKOFF = 8


@dataclass(slots=True)
class Estimate:
    """SRTT and RTTVAR of one path (RFC 6298 §2), when they were last updated, and the back-off
    since the last sample (§5.5, §5.7)."""

    srtt: float
    rttvar: float
    at: float
    misses: int = 0  # timeouts since the last sample
    backoff: float = 1.0

    def update(self, rtt: float, now: float) -> None:
        self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - rtt)
        self.srtt = (1 - ALPHA) * self.srtt + ALPHA * rtt
        self.at, self.misses, self.backoff = now, 0, 1.0

    def expired(self) -> None:
        self.misses += 1
        if self.misses >= MISSES_BEFORE_BACKOFF:
            self.misses, self.backoff = 0, min(self.backoff * 2, 64.0)

    def rto(self, min_rto: float, max_rto: float) -> float:
        rto = max(self.srtt + max(GRANULARITY, K * self.rttvar), min_rto) * self.backoff
        return min(rto, max_rto)


class RtoEstimator:
    """The retransmission timeouts of one endpoint's peers (see the module docstring).

    ``initial`` is what a CON's first timeout is before any sample: RFC 7252's ACK_TIMEOUT."""

    def __init__(
        self,
        initial: float,
        *,
        min_rto: float = MIN_RTO,
        max_rto: float | None = None,
        stale_after: float = STALE_AFTER,
        peer_bound: int = PEER_BOUND,
    ):
        max_rto = initial if max_rto is None else max_rto  # see the module docstring
        if min_rto <= 0 or initial <= 0 or max_rto <= 0:
            raise ValueError("MIN_RTO, MAX_RTO and the initial timeout must be positive")
        self.initial, self.min_rto, self.max_rto = initial, min(min_rto, max_rto), max_rto
        self.stale_after, self.peer_bound = stale_after, peer_bound
        self._peers: OrderedDict[Hashable, Estimate] = OrderedDict()
        self._link: Estimate | None = None
        self.samples = 0

    @classmethod
    def of(cls, params) -> RtoEstimator | None:
        """The estimator :class:`~msgin5g.coap.actions.Params` ask for (``adaptive_rto``), or None."""
        return cls(params.ack_timeout, min_rto=params.min_rto) if params.adaptive_rto else None

    def sample(self, peer: Hashable, rtt: float, now: float) -> bool:
        """A round trip measured to ``peer`` (a CON sent once and acknowledged: Karn's rule is the
        caller's). Negative values (a clock that went backwards) are ignored. True when this
        sample gave the link its first estimate (or its first after a stale one): the caller then
        re-times the CONs already in flight from ACK_TIMEOUT (:meth:`Retransmission.rebase
        <msgin5g.coap.actions.Retransmission.rebase>`) — a fleet that asks at once starts every
        exchange before the first sample exists."""
        if rtt < 0:
            return False
        self.samples += 1
        est = self._peers.pop(peer, None)
        if est is None or now - est.at > self.stale_after:
            est = Estimate(rtt, rtt / 2, now)
        else:
            est.update(rtt, now)
        self._peers[peer] = est
        while len(self._peers) > self.peer_bound:
            self._peers.popitem(last=False)
        link = self._link
        if link is None or now - link.at > self.stale_after:
            self._link = Estimate(rtt, rtt / 2, now)
            return True
        link.update(rtt, now)
        return False

    def expired(self, peer: Hashable) -> None:
        """A CON to ``peer`` timed out (it is retransmitted). RFC 6298 §5.5 doubles the RTO at
        every expiry and keeps it until the next sample (§5.7); on a lossy radio most expiries are
        losses, not a slower path, so the peer's and the link's RTO are doubled only after
        :data:`MISSES_BEFORE_BACKOFF` expiries with no sample between them. That still covers the
        case §5.7 is for: a path that became slower than the RTO, where every CON is retransmitted
        and Karn's rule leaves no sample to correct the estimate with."""
        for est in (self._peers.get(peer), self._link):
            if est is not None:
                est.expired()

    def rto(self, peer: Hashable, now: float) -> float:
        """The first timeout of a CON to ``peer`` now: its own estimate, else the link's, else
        ``initial``."""
        for est in (self._peers.get(peer), self._link):
            if est is not None and now - est.at <= self.stale_after:
                return est.rto(self.min_rto, self.max_rto)
        return self.initial

    def known(self, peer: Hashable) -> bool:
        return peer in self._peers
