"""The aiocoap adjustments: each fails here when the aiocoap internals it relies on change.

These are the guard that lets pyproject.toml accept any aiocoap 0.4.x at or above 0.4.17 instead
of one exact version: a release that moves the internals turns this file red before it can slow
or break a process (the tweaks themselves then step aside with a warning).
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
from aiocoap import CON, GET, Message, oscore
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import NON

from msgin5g.coap.aiocoap_tweaks import WINDOW_SIZE, LeasedSecurityContext, window_accepts
from msgin5g.coap.aiocoap_tweaks import core as tweaks


def test_option_copy_relies_on_a_shape_aiocoap_still_has():
    assert tweaks.option_copy_shape_problem() is None


def test_duplicate_cache_relies_on_a_shape_aiocoap_still_has():
    assert tweaks.duplicate_cache_shape_problem() is None


def test_nothing_is_installed_on_import():
    """Importing every module that used to patch aiocoap leaves it untouched (issue 9 item 4)."""
    code = (
        "import msgin5g.security, msgin5g.security.server, msgin5g.server.app, msgin5g.server.resources, "
        "msgin5g.coap.aiocoap_tweaks as t, msgin5g.scmc\n"
        "import aiocoap.options as o\n"
        "print('__deepcopy__' in vars(o.Options))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _bulk_like_message() -> Message:
    m = Message(
        code=Code.GET, mtype=NON, uri_path=("su-uc", "v1", "val-services", "msgin5g", "ue-configurations")
    )
    m.opt.uri_query = ("bulk-conf-flag=b1", *(f"ue-uri=urn:imei:35{i:013d}" for i in range(40)))
    m.opt.etag = b"\x01\x02"
    m.opt.block2 = (3, False, 6)
    m.opt.content_format = 60
    m.opt.add_option(_opaque(31, b"\x08"))  # Q-Block2, opaque to aiocoap
    return m


def _opaque(number, value):
    from aiocoap.numbers.optionnumbers import OptionNumber

    return OptionNumber(number).create_option(value=value)


def test_option_copy_gives_what_deepcopy_gave():
    m = _bulk_like_message()
    stock = copy.deepcopy(m.opt)
    assert tweaks.install_option_copy() is True
    try:
        assert tweaks.option_copy_installed()
        fast = copy.deepcopy(m.opt)
        assert fast is not m.opt
        assert [(o.number, o.encode()) for o in fast.option_list()] == [
            (o.number, o.encode()) for o in stock.option_list()
        ]
        assert all(a is not b for a, b in zip(fast.option_list(), m.opt.option_list(), strict=True))
        a, b = m.copy(), copy.deepcopy(m)
        a.mid = b.mid = 7
        assert a.encode() == b.encode()
        # independent: changing the copy leaves the original alone
        fast.uri_query = ("x=1",)
        fast.etag = b"\xff"
        assert m.opt.uri_query[0] == "bulk-conf-flag=b1" and m.opt.etag == b"\x01\x02"
    finally:
        del tweaks._options.Options.__deepcopy__
    assert not tweaks.option_copy_installed()


def test_install_is_idempotent_and_reports_an_unexpected_shape():
    try:
        assert tweaks.install_option_copy() and tweaks.install_option_copy()
    finally:
        del tweaks._options.Options.__deepcopy__
    tweaks._options.Options.__deepcopy__ = lambda self, memo: self  # a future aiocoap's own
    try:
        assert tweaks.option_copy_shape_problem() is not None
        assert tweaks.install_option_copy() is False
    finally:
        del tweaks._options.Options.__deepcopy__


# -- LeasedSecurityContext: RFC 8613 Appendix C vectors and §7.4 (expected values from the RFC) --
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


def test_tls_internals_read_by_the_tweaks_still_exist():
    """tls_peer_certificate and prune_failed_tls_connections read aiocoap's TLS server pool
    (a set of TcpConnection) and a connection's ``_transport`` (None until the handshake is done)."""
    import asyncio

    from aiocoap.transports.tcp import TcpConnection
    from aiocoap.transports.tls import TLSServer

    server = TLSServer()
    assert isinstance(server._pool, set)
    loop = asyncio.new_event_loop()
    conn = TcpConnection(server, None, loop, is_server=True)
    loop.close()
    assert conn._transport is None
    server._pool.add(conn)

    class Tman:
        token_interface = server

    class Ctx:
        request_interfaces = [Tman()]

    assert tweaks.prune_failed_tls_connections(Ctx()) == 1 and not server._pool
    assert tweaks.tls_peer_certificate(conn) is None


@pytest.mark.parametrize(
    ("salt", "sender", "recipient", "keys"),
    [
        # RFC 8613 Appendix C.1.1 (client, with Master Salt)
        (
            "9e7ca92223786340",
            "",
            "01",
            (
                "f0910ed7295e6ad4b54fc793154302ff",
                "ffb14e093c94c9cac9471648b4f98710",
                "4622d4dd6d944168eefb54987c",
            ),
        ),
        # RFC 8613 Appendix C.2.1 (client, without Master Salt)
        (
            "",
            "00",
            "01",
            (
                "321b26943253c7ffb6003b0b64d74041",
                "e57b5635815177cd679ab4bcec9d7dda",
                "be35ae297d2dace910c52e99f9",
            ),
        ),
    ],
)
def test_leased_context_derives_the_rfc_8613_test_vectors(salt, sender, recipient, keys):
    """The context's own HKDF (one Extract, one HMAC per Expand) gives RFC 8613's test vectors."""
    ctx = LeasedSecurityContext(
        sender_id=bytes.fromhex(sender),
        recipient_id=bytes.fromhex(recipient),
        secret=bytes.fromhex("0102030405060708090a0b0c0d0e0f10"),
        salt=bytes.fromhex(salt),
        algorithm="AES-CCM-16-64-128",
        lease=lambda n: (0, n),
    )
    assert (ctx.sender_key.hex(), ctx.recipient_key.hex(), ctx.common_iv.hex()) == keys
