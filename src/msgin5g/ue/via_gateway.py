"""Constrained UE with MSGin5G Client, configured through a Gateway UE (TS 24.538 6.2.2.2; SPEC §3.3, D9).

The constrained UE sends the ordinary §3.1 GET (TS 24.538 6.2.1.2) to the gateway's MSGin5G-6
endpoint — ``{apiRoot}/su-uc/v1/val-services/{valServiceId}/ue-configurations?ue-uri=...`` with
the gateway as the server. The gateway acknowledges at once with an empty ACK and answers later
with a confirmable separate response (RFC 7252 §5.2.2): 2.05 with the UE's document, or
4.03/4.04 (5.xx) with problem details. The UE handles a response addressed to itself — matched
by token, and for a 2.05 naming UEs only by URI, naming this UE — as §3.1 does, and ignores
anything else (SPEC §3.3).

Urgency: a request marked urgent carries the elective private-use option
:data:`msgin5g.api.OPT_URGENT` (65020, empty value); the gateway then flushes its
batch at once instead of waiting for it to fill (SPEC D9). Being elective, the option is simply
ignored by a node that does not know it.
"""

from __future__ import annotations

from aiocoap.optiontypes import OpaqueOption

from ..api import OPT_URGENT as URGENT_OPTION
from ..api import ApiRoot, config_query_uri
from ..outcome import ConfigResult, Outcome
from ..security.endpoint import ClientProtection, UnprotectedResponse
from .constrained import DEFAULT_TIMEOUT, CoapError, ConstrainedUe, get_request
from .outcome import result_from_response, result_from_unprotected
from .reask import ReaskPolicy


def _addressed_elsewhere(result: ConfigResult, ue_uri: str) -> bool:
    """A configuration naming UEs by URI only, none of them this UE (SPEC §3.3)."""
    ids = (result.doc or {}).get("valUeIds")
    if not isinstance(ids, dict) or ids.get("imeiRanges"):
        return False
    uris = ids.get("uris")
    return isinstance(uris, list) and bool(uris) and ue_uri not in uris


async def get_config_via_gateway(
    gateway_host: str,
    gateway_port: int,
    service_id: str = "msgin5g",
    ue_uri: str | None = None,
    ue_type: str | None = None,
    ue_snr: str | None = None,
    ue_vendor: str | None = None,
    urgent: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    security: object | None = None,
    reask: ReaskPolicy | None = ReaskPolicy(),
) -> ConfigResult:
    """MSGin5G UE configuration of a constrained UE through a Gateway UE (TS 24.538 6.2.2.2; SPEC §3.3).

    Never raises for protocol outcomes: no answer within ``timeout`` (which must cover the
    gateway's batching wait) or an unreadable answer is an ``Outcome.ERROR`` result.

    With ``security`` (the UE's OSCORE context with the *gateway*, standing in for PC5 unicast
    security, TS 33.503) the request is protected on the MSGin5G-6 leg and only an answer that
    verifies is handled; the gateway authenticates to the SCM-S as itself (TS 33.501 Annex Y;
    SPEC D12).

    With ``reask`` a lost exchange — no acknowledgement after the last retransmission, or no
    separate response within the exchange window — is followed at once by a new one, which the
    gateway takes as superseding the first (:mod:`msgin5g.ue.reask`; SPEC D13).
    """
    if not ue_uri:
        raise ValueError("ue_uri (the MSGin5G UE ID) is mandatory")
    uri = config_query_uri(
        ApiRoot("coap", gateway_host, gateway_port), service_id, ue_uri, ue_type, ue_snr, ue_vendor
    )
    extra = {"via": f"{gateway_host}:{gateway_port}", "urgent": urgent}
    protection = ClientProtection(security) if security is not None else None
    ue = ConstrainedUe(gateway_host, gateway_port, user_info=ue_uri, protection=protection, reask=reask)
    try:
        await ue.open()
    except OSError as e:
        return ConfigResult(
            Outcome.ERROR, detail=f"cannot reach the gateway {gateway_host}:{gateway_port}: {e}", extra=extra
        )
    try:
        msg = get_request(uri, via_proxy=False)
        if urgent:
            msg.opt.add_option(OpaqueOption(URGENT_OPTION, b""))
        try:
            response = await ue.fetch(msg, timeout=timeout)
        except UnprotectedResponse as e:
            return result_from_unprotected(e, extra)
        except (TimeoutError, CoapError) as e:
            return ConfigResult(
                Outcome.ERROR, detail=f"no configuration answer through the gateway: {e}", extra=extra
            )
        result = result_from_response(response)
        if result.outcome is Outcome.CONFIGURED and _addressed_elsewhere(result, ue_uri):
            return ConfigResult(
                Outcome.ERROR,
                result.code,
                detail="the configuration is addressed to another UE; ignored (TS 24.538 6.2.2.2)",
                extra=extra,
            )
        result.extra.update(extra)
        return result
    finally:
        await ue.close(release=False)
