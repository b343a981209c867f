"""How a constrained UE reads an answer addressed to itself (TS 24.538 6.2.1.2 / 6.2.2.2; SPEC §3.1, §3.3).

The §3.1 interpretation of 2.05 / 4.03 / 4.04 is :mod:`msgin5g.outcome`'s; this module turns a CoAP
response (an aiocoap ``Message``, verified first when OSCORE protects the exchange) into it.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

from aiocoap.message import Message
from aiocoap.numbers.codes import Code

from .. import codec
from ..outcome import ConfigResult, Outcome, result_from_docs, result_from_problem
from ..problem import CF_PROBLEM, Problem, decode_problem
from ..security.endpoint import UnprotectedResponse


def result_from_response(response: Message) -> ConfigResult:
    """Handle a response addressed to this UE as §3.1 does (TS 24.538 6.2.1.2 / 6.2.2.2)."""
    code = int(response.code)
    if code == int(Code.CONTENT):
        cf = response.opt.content_format
        cf = codec.CF_CBOR if cf is None else cf
        try:
            docs = codec.decode(response.payload, cf)
        except codec.CodecError as e:
            return ConfigResult(Outcome.ERROR, code, detail=f"unreadable 2.05 body: {e}")
        if not isinstance(docs, list) or not all(isinstance(d, dict) for d in docs):
            return ConfigResult(Outcome.ERROR, code, detail="2.05 body is not an array of UeConfigDoc")
        return result_from_docs(code, docs)
    problem: Problem | None = None
    if response.payload and response.opt.content_format == CF_PROBLEM:
        with contextlib.suppress(Exception):
            problem = decode_problem(response.payload, code)
    if problem is None:
        problem = Problem(code, response.payload.decode("utf-8", "replace")[:200])
    return result_from_problem(code, problem)


def result_from_unprotected(e: UnprotectedResponse, extra: dict | None = None) -> ConfigResult:
    """An unprotected answer to a protected request: an error, never the server's 2.05/4.03/4.04
    (so it cannot trigger the pre-configuration fall-back; RFC 8613 §8.4; SPEC D12)."""
    r = result_from_response(e.response)
    return ConfigResult(
        Outcome.ERROR,
        r.code,
        problem=r.problem,
        detail=f"unprotected answer, not from the server's security context: {r.problem or r.detail}",
        extra={**(extra or {}), "unprotected": True},
    )


def explain_refusal(result: ConfigResult, credentials, peer: str) -> ConfigResult:
    """One line saying what is wrong when ``peer`` (the SCM-S through a relay, or the Gateway UE)
    refused the UE's request with its uniform 4.01 (SPEC D12): no credentials given — name
    ``--credentials``; a protected request answered unprotected — its key is unknown or revoked
    there (the peer says no more, so that a prober learns nothing). Any other result unchanged."""
    if result.outcome is not Outcome.ERROR or result.code != int(Code.UNAUTHORIZED):
        return result
    if credentials is None:
        detail = f"4.01: the {peer} is secured; pass --credentials FILE (this UE's key, from 'msgin5g keys')"
    elif result.extra.get("unprotected"):
        detail = (
            f"4.01: the {peer} does not accept key {credentials.kid.hex()} of {credentials.identity} "
            "— unknown or revoked on this server (or the request was a replay)"
        )
    else:
        return result
    return replace(result, detail=detail)
