"""The Relay UE's PC5 link table and what it keeps per link (SPEC D8; TS 23.304 5.8.2; TS 24.538 6.2.2.1).

Pure data, no I/O. A :class:`Pc5Link` is one PC5 one-to-one link: remote UE Layer-2 ID ↔ the
endpoint it talks from. Each link owns:

* **its own upstream flow** (SPEC D8, revised): the relay relays every remote UE from an
  upstream endpoint of its own, as ProSe does. In layer-3 mode the relay is a NAT: one upstream
  source port per remote UE on the relay's own address. In layer-2 mode the remote UE has an
  address of its own: on loopback one of 127.0.0.0/8, :func:`layer2_address` of the link. The SCM-S
  therefore sees every remote UE as a separate CoAP endpoint — its own NSTART, its own message-ID
  and duplicate-detection space — and one UE's lost datagram never holds up another's.
* **its open exchanges** (:class:`Exchange`, at most ``max_exchanges`` per link): the requests
  relayed for it that are not answered yet. They bound what one remote UE can have outstanding
  through the relay; an exchange that ends (answered, reset, superseded by a request reusing its
  token, expired, link released) is removed and leaves nothing behind.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..coap.actions import Retransmission

Endpoint = tuple  # a socket address as the shell reports it, e.g. ("127.0.0.1", 40123)

#: layer-2 loopback addresses: 127.0.1.1 … 127.0.255.254 (254 × 255 = 64,770 remote UEs before reuse;
#: 127.0.0.x, which holds the usual 127.0.0.1, and the .0/.255 host octets are left out)
L2_HOSTS_PER_NET = 254
L2_NETS = 255


def layer2_address(link_id: int) -> str:
    """The remote UE's own upstream address in layer-2 mode on loopback (SPEC D8): ``127.0.<n>.<m>``.

    Derived from the link, so a link that is released and established again gets a new address
    and late answers for the old link can never reach the new one.
    """
    i = (link_id - 1) % (L2_HOSTS_PER_NET * L2_NETS)
    return f"127.0.{1 + i // L2_HOSTS_PER_NET}.{1 + i % L2_HOSTS_PER_NET}"


@dataclass(eq=False, slots=True)
class Exchange:
    """One request of one remote UE relayed upstream and not yet answered (RFC 7252 §5.3, §4.2).

    The relay keeps the UE's token and message ID on its upstream flow (the flow is the UE's
    alone), so ``mid``/``token`` are the UE's and ``datagram`` is the request exactly as relayed:
    a retransmission from the UE (same MID) goes up again byte for byte, and the SCM-S recognises it
    as a duplicate of what it already has.
    """

    token: bytes
    mid: int
    con: bool
    created: float
    datagram: bytes  # the request as relayed upstream
    acked: bool = False  # the SCM-S sent an empty ACK: a separate response follows (RFC 7252 §5.2.2)
    observing: bool = False  # a successful response carried Observe: notifications follow (RFC 7641)
    server_mid: int | None = None  # MID of the last CON/NON response or notification relayed down
    transmissions: int = 1
    #: hop-by-hop (SPEC D8; :mod:`.hop`): the relay's own retransmission of a CON on Uu, None once
    #: the SCM-S answered or acknowledged it
    tx: Retransmission | None = None
    #: hop-by-hop: when the UE's empty ACK is due (None: sent, or the answer was piggybacked)
    ack_due: float | None = None
    #: hop-by-hop: what makes a later request of the UE the same one asked again (relay/hop.py)
    retry_key: tuple | None = None


@dataclass(eq=False)
class Pc5Link:
    """One PC5 one-to-one link (TS 23.304 5.8.2; SPEC D8) and the state the relay keeps for it."""

    link_id: int
    l2id: int
    endpoint: Endpoint
    user_info: str
    established_at: float
    last_seen: float
    auto: bool = False
    released: bool = False
    released_at: float = 0.0
    source: str | None = None  # upstream source address (layer 2 on loopback), None: the relay's own
    exchanges: dict[bytes, Exchange] = field(default_factory=dict)  # by token, oldest first
    _mid: int = 0  # message IDs of the relay's own messages to this UE (its 5.05, 4.00, … answers)
    #: hop-by-hop (:mod:`.hop`): answers sent down as CON and not yet acknowledged, by the relay's MID
    deliveries: dict[int, Any] = field(default_factory=dict)
    #: hop-by-hop: recent message IDs (→ remembered until) of the UE's CON requests and of the SCM-S's
    #: CON answers, for duplicate detection on each leg (RFC 7252 §4.5); bounded
    answered_mids: OrderedDict = field(default_factory=OrderedDict)
    server_mids: OrderedDict = field(default_factory=OrderedDict)

    def next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def exchange_by_mid(self, mid: int) -> Exchange | None:
        for ex in self.exchanges.values():
            if ex.mid == mid:
                return ex
        return None

    def exchange_by_server_mid(self, mid: int) -> Exchange | None:
        for ex in self.exchanges.values():
            if ex.server_mid == mid:
                return ex
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "l2id": f"{self.l2id:06x}",
            "endpoint": f"{self.endpoint[0]}:{self.endpoint[1]}",
            "userInfo": self.user_info,
            "auto": self.auto,
            "upstreamSource": self.source or "relay",
            "openExchanges": len(self.exchanges),
            "answersInFlight": len(self.deliveries),
        }


class LinkTableFull(Exception):
    pass


class Pc5LinkTable:
    """Remote UE Layer-2 ID ↔ endpoint, at most ``max_links`` links (SPEC D8; TS 23.304)."""

    def __init__(self, max_links: int = 8):
        self.max_links = max_links
        self._by_endpoint: dict[Endpoint, Pc5Link] = {}
        self._by_l2id: dict[int, Pc5Link] = {}
        self._by_id: dict[int, Pc5Link] = {}
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._by_endpoint)

    def __iter__(self):
        return iter(list(self._by_endpoint.values()))

    @property
    def full(self) -> bool:
        return len(self._by_endpoint) >= self.max_links

    def by_endpoint(self, endpoint: Endpoint) -> Pc5Link | None:
        return self._by_endpoint.get(endpoint)

    def by_l2id(self, l2id: int) -> Pc5Link | None:
        return self._by_l2id.get(l2id)

    def by_id(self, link_id: int) -> Pc5Link | None:
        """The established link with this id (None once released)."""
        return self._by_id.get(link_id)

    def is_established(self, link: Pc5Link) -> bool:
        """The link is in the table now (not released, not replaced by a newer link of the same UE)."""
        return self._by_id.get(link.link_id) is link

    def add(self, endpoint: Endpoint, l2id: int, user_info: str, now: float, auto: bool = False) -> Pc5Link:
        """Create a link; the caller has released any link on the same endpoint or Layer-2 ID."""
        if endpoint in self._by_endpoint or l2id in self._by_l2id:
            raise ValueError("endpoint or Layer-2 ID already linked")
        if self.full:
            raise LinkTableFull
        link = Pc5Link(self._next_id, l2id, endpoint, user_info, now, now, auto=auto)
        link._mid = (self._next_id * 7919) & 0xFFFF
        self._next_id += 1
        self._by_endpoint[endpoint] = link
        self._by_l2id[l2id] = link
        self._by_id[link.link_id] = link
        return link

    def remove(self, link: Pc5Link, now: float) -> None:
        if self._by_endpoint.get(link.endpoint) is link:
            del self._by_endpoint[link.endpoint]
        if self._by_l2id.get(link.l2id) is link:
            del self._by_l2id[link.l2id]
        self._by_id.pop(link.link_id, None)
        link.released = True
        link.released_at = now

    def expired(self, now: float, timeout: float) -> list[Pc5Link]:
        return [link for link in self._by_endpoint.values() if now - link.last_seen > timeout]
