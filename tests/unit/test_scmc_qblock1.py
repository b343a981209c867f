"""The admin client's Q-Block1 path over OSCORE, without sockets (RFC 9177 §4.3; RFC 8613 §8.4 and
Appendix B.1.2; SPEC D12): what it does with each answer the message layer hands up, and the
SCM-S's rule that a suppressed response is never protected and sent (RFC 7967)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code

from msgin5g.coap import wire
from msgin5g.scmc import ScmClient, ScmClientError, UnprotectedAnswer
from msgin5g.security.server import suppressed

ECHO = b"\x0e\xc0"


@dataclass
class Key:
    """Stands in for a key file: the layer is faked, so the context is never used."""

    kid: bytes = b"\x01"
    identity: str = "admin:ops"

    def security_context(self):
        return object()


class FakeLayer:
    """The message layer's endpoint: records each request and hands up the next answer; an
    answer marked unprotected is noted by the request's protection as the layer's verify would."""

    def __init__(self, *answers):
        self.answers, self.requests = list(answers), []

    async def request(self, msg, **kw):
        self.requests.append((msg, kw))
        code, options, unprotected = self.answers.pop(0)
        answer = wire.CoapMessage(wire.ACK, code, 1, b"tk", options, b"")
        if unprotected:
            kw["protection"].unprotected.add(answer.token)
        return answer

    def close(self):
        pass


def client(layer: FakeLayer, credentials=True) -> ScmClient:
    c = ScmClient("coap://127.0.0.1:5683", credentials=Key() if credentials else None)
    c._ctx, c._udp = object(), layer  # as after __aenter__
    return c


def large_post() -> Message:
    return Message(code=Code.POST, uri="coap://127.0.0.1:5683/x", payload=b"q" * 3000)


async def test_an_echo_challenge_is_answered_once_with_the_echo_value():
    layer = FakeLayer((0x81, [(wire.OPT_ECHO, ECHO)], False), (0x41, [], False))
    answer = await client(layer).request(large_post())
    assert answer.code == Code.CREATED
    first, second = (m for m, _ in layer.requests)
    assert first.first(wire.OPT_ECHO) is None and second.first(wire.OPT_ECHO) == ECHO
    assert second.payload == first.payload == b"q" * 3000
    assert all(kw["protection"] is not None and kw["qblock1"] is not None for _, kw in layer.requests)


async def test_a_second_echo_challenge_is_the_answer_not_a_loop():
    layer = FakeLayer((0x81, [(wire.OPT_ECHO, ECHO)], False), (0x81, [(wire.OPT_ECHO, ECHO)], False))
    answer = await client(layer).request(large_post())
    assert answer.code == Code.UNAUTHORIZED and len(layer.requests) == 2


async def test_an_unprotected_answer_is_the_servers_refusal():
    layer = FakeLayer((0x81, [], True))
    with pytest.raises(UnprotectedAnswer, match="does not accept key 01 of admin:ops"):
        await client(layer).request(large_post())


async def test_without_credentials_nothing_is_protected():
    layer = FakeLayer((0x41, [], False))
    answer = await client(layer, credentials=False).request(large_post())
    assert answer.code == Code.CREATED and layer.requests[0][1]["protection"] is None


async def test_a_small_body_does_not_go_through_the_layer():
    layer = FakeLayer()
    c = client(layer)
    assert not c.sends_qblock1(Message(code=Code.POST, payload=b"q" * 1024))
    assert c.sends_qblock1(Message(code=Code.POST, payload=b"q" * 1025))


def test_a_tcp_scm_s_is_not_sent_q_block1():
    c = ScmClient("coap+tcp://127.0.0.1:5683")
    assert not c.sends_qblock1(Message(code=Code.POST, payload=b"q" * 5000))


@pytest.mark.parametrize(
    "code, value, expected",
    [
        (Code.CONTINUE, 2 | 8 | 16, True),  # 2.31 in a set: nothing but an empty ACK
        (Code.CONTENT, 2, True),
        (Code.CONTENT, 8 | 16, False),
        (Code.REQUEST_ENTITY_INCOMPLETE, 2, False),  # a 4.08 listing missing blocks is sent
        (Code.REQUEST_ENTITY_INCOMPLETE, 8, True),
        (Code.SERVICE_UNAVAILABLE, 16, True),
        (Code.CREATED, None, False),
    ],
)
def test_suppressed_follows_rfc7967_classes(code, value, expected):
    assert suppressed(Message(code=code, no_response=value)) is expected


async def test_an_error_that_is_not_blockwise_stays_a_timeout():
    from msgin5g.coap.udp import CoapError

    class Silent(FakeLayer):
        async def request(self, msg, **kw):
            raise CoapError("no answer", "timeout")

    with pytest.raises(TimeoutError, match="no answer"):
        await client(Silent()).request(large_post())


async def test_answers_that_all_failed_verification_are_said_to_have_failed_it():
    """The layer drops answers that do not verify as if lost (RFC 8613 §8.4); when the transfer
    then ends without an answer, the client says why instead of "no answer"."""
    from msgin5g.coap.udp import CoapError

    class Forged(FakeLayer):
        async def request(self, msg, **kw):
            kw["protection"].failed.append("tag mismatch")
            raise CoapError("no answer", "timeout")

    with pytest.raises(ScmClientError, match="failed OSCORE verification: tag mismatch"):
        await client(Forged()).request(large_post())
