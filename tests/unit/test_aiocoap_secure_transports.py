"""The coaps / coaps+ws adjustments of aiocoap (msgin5g.coap.aiocoap_tweaks.secure_transports): each
fails here when the aiocoap internals it relies on change; and the DTLS session bound, on a real
aiocoap DTLS server on loopback.
"""

from __future__ import annotations

import asyncio
import socket

import aiocoap
import aiocoap.resource
import pytest

from msgin5g.coap import aiocoap_tweaks
from msgin5g.coap.aiocoap_tweaks import secure_transports as st


def test_dtls_session_bound_relies_on_a_shape_aiocoap_still_has():
    assert st.dtls_shape_problem() is None


def test_coaps_ws_listener_relies_on_a_shape_aiocoap_still_has():
    assert st.coaps_ws_shape_problem() is None


def test_dtlssocket_is_installed():
    assert st.dtls_available() is None


def test_no_claim_outside_dtls():
    class Remote:
        scheme = "coap"
        _psk_store = type("S", (), {"_claims": "ue:x"})()

    assert st.dtls_psk_claim(Remote()) is None
    Remote.scheme = "coaps"
    assert st.dtls_psk_claim(Remote()) == "ue:x"
    assert st.dtls_psk_claim(object()) is None


class NoKeys:
    def find_dtls_psk(self, identity):
        raise KeyError(identity)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A DTLS 1.2 ClientHello record header and a few bytes: enough for aiocoap to make a session object
HELLO = bytes.fromhex("16fefd0000000000000000002e") + bytes(46)


async def test_dtls_sessions_are_bounded_in_number_and_idle_time():
    port = free_udp_port()
    ctx = await aiocoap.Context.create_server_context(
        aiocoap.resource.Site(),
        bind=("127.0.0.1", port - 1),
        transports=["tinydtls_server"],
        server_credentials=NoKeys(),
    )
    try:
        sessions = aiocoap_tweaks.bound_dtls_sessions(ctx, max_sessions=3, idle_timeout=60.0)
        socks = []
        for _ in range(5):  # five clients, five source addresses
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(HELLO, ("127.0.0.1", port))
            socks.append(s)
            await asyncio.sleep(0.05)
        for _ in range(100):
            if sessions.evicted >= 2:
                break
            await asyncio.sleep(0.05)
        assert sessions.count == 3 and sessions.evicted == 2
        assert len(sessions.pool._connections) == sessions.count
        held = set(sessions.pool._connections)
        assert ("127.0.0.1", socks[-1].getsockname()[1]) in held  # the newest is kept
        assert ("127.0.0.1", socks[0].getsockname()[1]) not in held  # the oldest was ended
        assert sessions.sweep() == 0  # none idle yet
        assert sessions.sweep(now=10**9) == 3  # all idle past the timeout
        assert sessions.count == 0 and not sessions.seen
        for s in socks:
            s.close()
    finally:
        await ctx.shutdown()


def test_dtls_bound_refuses_a_context_without_dtls():
    async def run():
        ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            with pytest.raises(RuntimeError, match="no DTLS server"):
                aiocoap_tweaks.bound_dtls_sessions(ctx, 3, 1.0)
        finally:
            await ctx.shutdown()

    asyncio.run(run())
