"""What the project relies on in aiocoap's OSCORE internals (msgin5g.coap.aiocoap_tweaks; SPEC D12).

Expected values come from RFC 8613 Appendix C (test vectors 1 and 4) and §7.4, not from the code
under test: if aiocoap's context classes, key derivation, nonce construction or replay window
change shape, these fail.
"""

from __future__ import annotations

import pytest
from aiocoap import CON, GET, Message, oscore

from msgin5g.coap.aiocoap_tweaks import WINDOW_SIZE, LeasedSecurityContext, window_accepts

# RFC 8613 C.1.1 (client) / C.1.2 (server)
SECRET = bytes.fromhex("0102030405060708090a0b0c0d0e0f10")
SALT = bytes.fromhex("9e7ca92223786340")
CLIENT_KEY = "f0910ed7295e6ad4b54fc793154302ff"
SERVER_KEY = "ffb14e093c94c9cac9471648b4f98710"
COMMON_IV = "4622d4dd6d944168eefb54987c"
# RFC 8613 C.4: the request of C.1 with Sender Sequence Number 20, token 0x00003974, MID 0x5d1f
C4_PROTECTED = "44025d1f00003974396c6f63616c686f7374620914ff612f1092f1776f1c1668b3825e"


def pair(leases: list, client_lease=lambda n: (20, 20 + n)):
    client = LeasedSecurityContext(
        sender_id=b"",
        recipient_id=b"\x01",
        secret=SECRET,
        salt=SALT,
        algorithm="AES-CCM-16-64-128",
        lease=client_lease,
    )

    def server_lease(n):
        leases.append(n)
        return (1000, 1000 + n)

    server = LeasedSecurityContext(
        sender_id=b"\x01",
        recipient_id=b"",
        secret=SECRET,
        salt=SALT,
        algorithm="AES-CCM-16-64-128",
        lease=server_lease,
        window=(0, 0),
        claims=["oscore-kid:"],
    )
    return client, server


def c4_request() -> Message:
    m = Message(code=GET, mtype=CON, token=bytes.fromhex("00003974"))
    m.opt.uri_host = "localhost"
    m.opt.uri_path = ("tv1",)
    return m


def test_key_derivation_matches_rfc8613_c1():
    client, server = pair([])
    assert client.sender_key.hex() == CLIENT_KEY and client.recipient_key.hex() == SERVER_KEY
    assert server.sender_key.hex() == SERVER_KEY and server.recipient_key.hex() == CLIENT_KEY
    assert client.common_iv.hex() == COMMON_IV


def test_protection_matches_rfc8613_c4_with_a_leased_sequence_number():
    client, _ = pair([])
    outer, _ = client.protect(c4_request())
    outer.mid, outer.mtype, outer.token = 0x5D1F, CON, bytes.fromhex("00003974")
    assert outer.encode().hex() == C4_PROTECTED
    assert client.sender_sequence_number == 21  # the next number of the lease [20, 36)


def test_server_verifies_and_strikes_out_and_refuses_the_replay():
    client, server = pair([])
    outer, _ = client.protect(c4_request())
    outer.mid, outer.mtype, outer.token = 0x5D1F, CON, bytes.fromhex("00003974")
    wire = Message.decode(outer.encode())
    inner, request_id = server.unprotect(wire)
    assert inner.opt.uri_path == ("tv1",) and int.from_bytes(request_id.partial_iv, "big") == 20
    with pytest.raises(oscore.ReplayError):
        server.unprotect(Message.decode(outer.encode()))


def test_a_lease_is_taken_before_the_first_own_number_and_renewed_when_used_up():
    leases: list[int] = []
    _, server = pair(leases)
    numbers = [server.new_sequence_number() for _ in range(LeasedSecurityContext.LEASE_START + 1)]
    assert numbers == [*range(1000, 1000 + LeasedSecurityContext.LEASE_START), 1000]
    # the second lease (the fake hands out 1000 again) is asked for twice the block
    assert leases == [LeasedSecurityContext.LEASE_START, 2 * LeasedSecurityContext.LEASE_START]


def test_an_empty_lease_makes_the_context_unavailable():
    client, _ = pair([], client_lease=lambda n: (5, 5))
    with pytest.raises(oscore.ContextUnavailable):
        client.new_sequence_number()


def test_window_rules_of_rfc8613_7_4():
    assert WINDOW_SIZE == 32
    w = window_accepts((0, 0), 5)
    assert w == (0, 1 << 5)
    assert window_accepts(w, 5) is None  # seen
    assert window_accepts(w, 4) == (0, (1 << 5) | (1 << 4))  # inside the window, unseen
    far = window_accepts(w, 40)  # moves the window: its lowest number is 40 - 31 = 9
    assert far == (9, 1 << 31)
    assert window_accepts(far, 8) is None  # fell behind
    assert window_accepts(far, 9) == (9, (1 << 31) | 1)
