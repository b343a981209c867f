"""The one CoAP message layer of the project's datagram actors (RFC 7252, RFC 7959, RFC 9177).

* :mod:`.wire` — the RFC 7252 §3 codec (and the conversion to aiocoap messages at the OSCORE boundary);
* :mod:`.msglayer` — pure message layer: message IDs, duplicate detection, CON retransmission,
  requests and separate responses, Block2 (no sockets, no clocks);
* :mod:`.udp` — the asyncio datagram shell that performs the message layer's actions;
* :mod:`.qblock` — pure RFC 9177 Q-Block state (server bursts, client recovery, Q-Block1 bodies);
* :mod:`.aiocoap_tweaks` — every adjustment of aiocoap internals, installed explicitly.
"""
