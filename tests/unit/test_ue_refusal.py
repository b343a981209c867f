"""What a UE's command says when the node its request was protected for refuses it with the uniform
4.01 of SPEC D12 (RFC 8613 §8.2: the server gives no reason), one line each: no credentials given,
or a key unknown or revoked there. Other outcomes pass through unchanged."""

from __future__ import annotations

from dataclasses import dataclass

from msgin5g.authz import Identity, Role
from msgin5g.outcome import ConfigResult, Outcome
from msgin5g.ue.outcome import explain_refusal


@dataclass
class _Key:
    kid: bytes
    identity: Identity


KEY = _Key(b"\x2a", Identity(Role.UE, "urn:gsma:imei:35209900-000007-5"))


def test_no_credentials_names_the_option():
    r = explain_refusal(ConfigResult(Outcome.ERROR, 0x81, detail="x"), None, "SCM-S")
    assert r.detail.startswith("4.01: the SCM-S is secured; pass --credentials FILE")
    assert "\n" not in r.detail


def test_unprotected_refusal_of_a_key_names_the_key():
    refused = ConfigResult(Outcome.ERROR, 0x81, detail="x", extra={"unprotected": True})
    r = explain_refusal(refused, KEY, "Gateway UE")
    assert r.detail == (
        "4.01: the Gateway UE does not accept key 2a of ue:urn:gsma:imei:35209900-000007-5 "
        "— unknown or revoked on this server (or the request was a replay)"
    )


def test_other_answers_are_left_alone():
    protected_401 = ConfigResult(Outcome.ERROR, 0x81, detail="passed on from the SCM-S")
    assert explain_refusal(protected_401, KEY, "Gateway UE").detail == "passed on from the SCM-S"
    for result in (
        ConfigResult(Outcome.FORBIDDEN, 0x83, detail="4.03"),
        ConfigResult(Outcome.ERROR, None, detail="no answer"),
        ConfigResult(Outcome.ERROR, 0xA3, detail="5.03", extra={"unprotected": True}),
    ):
        assert explain_refusal(result, KEY, "SCM-S") is result
