"""What the Relay UE's core returns and the shell performs (SPEC D8): pure values, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from ..pc5 import Pc5Message
from ..problem import Problem
from .links import Endpoint


@dataclass(frozen=True, slots=True)
class SendUplink:
    """Send ``datagram`` to the SCM-S on the upstream flow of link ``uplink``."""

    uplink: int
    datagram: bytes


@dataclass(frozen=True, slots=True)
class SendDownlink:
    """Send ``datagram`` (CoAP) to a remote UE over PC5."""

    endpoint: Endpoint
    datagram: bytes


@dataclass(frozen=True, slots=True)
class Answer:
    """The relay itself answers a remote UE's request (5.05, 5.03, 4.00, 4.02, 4.04, 4.05)."""

    endpoint: Endpoint
    datagram: bytes
    problem: Problem


@dataclass(frozen=True, slots=True)
class SendPc5:
    """Send PC5 signalling (SPEC D8) to a remote UE."""

    endpoint: Endpoint
    message: Pc5Message


@dataclass(frozen=True, slots=True)
class OpenUplink:
    """Open the upstream flow of link ``uplink``: a socket of its own, bound to ``source`` if given
    (layer 2: the remote UE's own address) or to the relay's address with a fresh port (layer 3)."""

    uplink: int
    source: str | None = None


@dataclass(frozen=True, slots=True)
class CloseUplink:
    uplink: int


@dataclass(frozen=True, slots=True)
class Discard:
    """Nothing is sent; the datagram was discarded for ``reason`` (already counted)."""

    reason: str
    detail: str = ""


Action = SendUplink | SendDownlink | Answer | SendPc5 | OpenUplink | CloseUplink | Discard
