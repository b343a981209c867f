"""The aiocoap adjustments of :mod:`msgin5g.coap.aiocoap_hardening` and the admission core, without
sockets — and the aiocoap internals they rely on, so that an aiocoap upgrade that changes them fails
here first (RFC 7252 §4.2, §4.5, §5.4.1, §5.9.2.9; RFC 7959 §2.9; RFC 8516).
"""

from __future__ import annotations

import inspect

import cbor2
import pytest
from aiocoap import Message
from aiocoap.blockwise import Block1Spool, ContinueException, IncompleteException
from aiocoap.interfaces import ObservableResource
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption
from aiocoap.transports import udp6
from aiocoap.util.asyncio.recvmsg import RecvmsgSelectorDatagramTransport

from msgin5g.coap.aiocoap_tweaks.hardening import (
    UNPARSABLE_LOG,
    DuplicateCache,
    parse_header,
    problem_answer,
    screen_truncated,
    screen_undecodable,
    screen_unparsable,
)
from msgin5g.server.admission import Admission, AdmissionConfig
from msgin5g.server.resources import ScmBlock1Spool
from msgin5g.testing.fuzz import ACK, CON, GET, NON, RST, encode_message, request


# -- the aiocoap internals relied on ------------------------------------------------------------------------
def test_aiocoap_message_manager_has_the_deduplication_hooks_replaced():
    for name in ("_deduplicate_message", "_store_response_for_duplicates", "_send_initially"):
        assert callable(getattr(MessageManager, name, None)), name
    src = inspect.getsource(MessageManager)
    assert "self._recent_messages" in src
    assert "if self._deduplicate_message(message) is True" in src  # dispatch consults the hook
    assert "self._store_response_for_duplicates(" in src


def test_aiocoap_udp_transport_shape_the_guard_relies_on():
    params = list(inspect.signature(udp6.MessageInterfaceUDP6.datagram_msg_received).parameters)
    assert params == ["self", "data", "ancdata", "flags", "address"]
    src = inspect.getsource(udp6.MessageInterfaceUDP6.datagram_msg_received)
    assert f'self.log.warning("{UNPARSABLE_LOG}"' in src  # what the guard's log tap recognises
    assert "Message.decode(" in src
    assert RecvmsgSelectorDatagramTransport.max_size == 4096  # the 4.13 Size1 the guard announces
    assert "self.transport.sendmsg(" in inspect.getsource(udp6.MessageInterfaceUDP6.send)


def test_aiocoap_still_raises_outside_its_own_error_type_on_invalid_utf8():
    """Why the guard exists: a text option with invalid UTF-8 is not an UnparsableMessage."""
    datagram = encode_message(CON, GET, 1, b"t", [(11, b"\xff")])
    with pytest.raises(UnicodeDecodeError):
        Message.decode(datagram)


def test_aiocoap_observation_finish_needs_acceptance():
    """Why add_observation accepts then deregisters: aiocoap calls the cancellation callback of
    every observation it started, accepted or not."""
    src = inspect.getsource(ObservableResource._render_to_pipe)
    assert "servobs._cancellation_callback()" in src
    assert "servobs._early_deregister" in src


def _block(num: int, more: bool, payload: bytes, token=b"t") -> Message:
    m = Message(code=Code.POST, uri="coap://127.0.0.1/x", payload=payload, token=token)
    m.opt.block1 = BlockOption.BlockwiseTuple(num, more, 0)
    m.remote = _Remote()
    return m


class _Remote:
    blockwise_key = ("r",)


async def test_aiocoap_block1_gap_raises_value_error_and_the_spool_makes_it_4_08():
    stock = Block1Spool()
    with pytest.raises(ContinueException):
        stock.feed_and_take(_block(0, True, b"x" * 16))
    with pytest.raises(ValueError):
        stock.feed_and_take(_block(2, True, b"x" * 16))
    ours = ScmBlock1Spool()
    with pytest.raises(ContinueException):
        ours.feed_and_take(_block(0, True, b"x" * 16))
    with pytest.raises(IncompleteException) as e:
        ours.feed_and_take(_block(2, True, b"x" * 16))
    assert e.value.to_message().code == Code.REQUEST_ENTITY_INCOMPLETE


# -- pure pieces -------------------------------------------------------------------------------------------
def test_parse_header():
    h = parse_header(request(GET, "a", mid=0x1234, token=b"\x01\x02\x03"))
    assert (h.mtype, h.code, h.mid, h.token, h.is_request) == (CON, GET, 0x1234, b"\x01\x02\x03", True)
    assert parse_header(b"\x40\x01") is None  # too short
    assert parse_header(b"\x80\x01\x00\x01") is None  # version 2
    assert parse_header(b"\x49\x01\x00\x01" + b"x" * 9) is None  # token length 9 is reserved
    assert parse_header(b"\x44\x01\x00\x01ab") is None  # token cut short


def test_problem_answer_is_a_valid_coap_message_with_problem_details():
    h = parse_header(request(GET, "a", mid=77, token=b"tk"))
    m = Message.decode(problem_answer(h, 0x8D, "too big", "REQUEST_TOO_LARGE", size1=4096))
    assert m.mtype == ACK and m.mid == 77 and m.token == b"tk"
    assert int(m.code) == 0x8D and int(m.opt.content_format) == 257 and m.opt.size1 == 4096
    pd = cbor2.loads(m.payload)
    assert pd == {-1: "Request Entity Too Large", -2: "too big", -4: 0x8D, "cause": "REQUEST_TOO_LARGE"}
    non = parse_header(request(GET, "a", mid=78, token=b"tk", mtype=NON))
    m = Message.decode(problem_answer(non, 0x82, "bad", "BAD_OPTION", mid=5))
    assert m.mtype == NON and m.mid == 5 and m.opt.size1 is None


def test_screening_verdicts():
    req = request(GET, "a", mid=9, token=b"z")
    assert screen_truncated(req, 4096).counter == "truncated-answered"
    ack = encode_message(ACK, 0x45, 9, b"z")
    assert screen_truncated(ack, 4096).answer is None
    v = screen_undecodable(req, UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"))
    assert int(Message.decode(v.answer).code) == 0x82
    con_response = encode_message(CON, 0x45, 10, b"z")
    rst = Message.decode(screen_undecodable(con_response, ValueError("x")).answer)
    assert rst.mtype == RST and rst.mid == 10
    assert screen_undecodable(b"\x00", ValueError("x")).answer is None
    assert Message.decode(screen_unparsable(req).answer).mtype == RST
    assert screen_unparsable(request(GET, "a", mtype=NON)).answer is None


def test_duplicate_cache_expires_sheds_and_tolerates_late_pops():
    c = DuplicateCache(lifetime=10.0, max_entries=3)
    for i in range(3):
        assert c.add(i, now=float(i)) == 0
    assert 0 in c and c[0] is None
    c[0] = "answer"
    assert c[0] == "answer"
    c["unknown"] = "ignored"  # only remembered message IDs get a response
    assert "unknown" not in c
    assert c.add(3, now=3.0) == 1 and 0 not in c and c.shed == 1  # oldest shed when full
    c.expire(11.5)  # entries 1 (expires 11) gone, 2 (12) and 3 (13) kept
    assert 1 not in c and 2 in c and len(c) == 2
    assert list(c) == [2, 3] and dict(c.items()) == {2: None, 3: None}
    assert c.pop("never-there") is None and c.pop(2) is None and len(c) == 1


def test_admission_rate_limit_per_client_with_max_age():
    a = Admission(AdmissionConfig(client_rate=0.5, client_burst=2, overload_delay=0))
    assert a.admit("c1", 0.0) is None and a.admit("c1", 0.0) is None
    problem, max_age = a.admit("c1", 0.0)
    assert problem.code == 0x9D and problem.cause == "TOO_MANY_REQUESTS" and max_age == 2  # 1 token / 0.5 s⁻¹
    assert a.admit("c2", 0.0) is None  # its own bucket
    assert a.admit("c1", 2.0) is None  # one token back after 2 s
    assert a.counters == {"rate-limited": 1}


def test_admission_overload_sheds_requests_that_waited_too_long():
    a = Admission(AdmissionConfig(overload_delay=2.0, retry_after=3))
    assert a.admit("c", 10.0, waited=1.9) is None
    problem, max_age = a.admit("c", 10.0, waited=2.0)
    assert problem.code == 0xA3 and problem.cause == "OVERLOADED" and max_age == 3
    assert a.admit("c", 10.0, waited=None) is None  # no arrival time (e.g. TCP): not judged
    assert Admission(AdmissionConfig(overload_delay=0)).admit("c", 0.0, waited=99) is None


def test_admission_table_is_bounded():
    a = Admission(AdmissionConfig(client_rate=1, max_clients=10, overload_delay=0))
    for i in range(1000):
        a.admit(i, 0.0)
    assert len(a._buckets) == 10


def test_aiocoap_stream_transports_abort_on_their_own_parse_error_only():
    """What install_stream_guard relies on: the TCP and WebSocket transports decode with a module
    function looked up at call time, and abort the connection on UnparsableMessage alone."""
    from aiocoap.transports import tcp, ws

    for module in (tcp, ws):
        assert callable(module._decode_message)
    tcp_src = inspect.getsource(tcp.TcpConnection.data_received)
    assert "msg = _decode_message(msg)" in tcp_src and "except error.UnparsableMessage:" in tcp_src
    assert 'self.abort("Failed to parse message")' in tcp_src
    assert "_decode_message(received)" in inspect.getsource(ws)


def test_stream_guard_turns_a_malformed_option_into_aiocoaps_parse_error():
    from aiocoap import error
    from aiocoap.transports import tcp

    from msgin5g.coap.aiocoap_tweaks.hardening import install_stream_guard

    assert install_stream_guard() == ["tcp", "ws"]
    assert install_stream_guard() == ["tcp", "ws"]  # idempotent
    with pytest.raises(error.UnparsableMessage):
        tcp._decode_message(bytes([0x30, 0x01, 0xB2]) + b"\xff\xfe")
    assert tcp._decode_message(bytes([0x30, 0x01, 0xB2]) + b"ab").opt.uri_path == ("ab",)
