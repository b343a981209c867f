"""Constrained UE with MSGin5G Client, configured through a Relay UE (TS 24.538 6.2.2.2; SPEC §3.3, D8).

The constrained UE

1. establishes its PC5 one-to-one link with the relay (:mod:`msgin5g.pc5`, modelled on the
   TS 24.554 direct link establishment) from the UDP endpoint it will use for CoAP — the relay
   knows its clients by that endpoint;
2. sends the §3.1 GET (TS 24.538 6.2.1.2) with the recipient, the configuration management server
   functionality, in ``Proxy-Uri`` (RFC 7252 §5.7.2; SPEC D8) — or, with its OSCORE credentials,
   protected end to end with the recipient in ``Proxy-Scheme`` + ``Uri-Host`` + ``Uri-Port``
   (RFC 8613 decomposes ``Proxy-Uri``; :mod:`msgin5g.security.endpoint`; SPEC D12);
3. handles 2.05 / 4.03 / 4.04 addressed to itself as §3.1 does — with OSCORE only an answer that
   verifies, repeating a request once for a restarted server's Echo challenge (RFC 8613
   Appendix B.1.2) — and ignores any response that is not (a token it did not send; SPEC §3.3);
4. releases its link when done.

Link signalling and CoAP share one socket: the UE's endpoint is :class:`~msgin5g.ue.constrained.
ConstrainedUe`, on the project's CoAP message layer (:mod:`msgin5g.coap`). The same endpoint,
without a link and without ``Proxy-Uri``, talks to an SCM-S directly — the benchmark uses that to
compare relayed with direct configuration. The recipient's URI is built by :mod:`msgin5g.api`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..api import ApiUriError, collection_uri, config_query_uri
from ..coap.qblock_client import QBlockOffer
from ..outcome import ConfigResult, Outcome
from ..security.endpoint import ClientProtection, UnprotectedResponse, forward_proxy_request
from .constrained import DEFAULT_TIMEOUT, CoapError, ConstrainedUe, LinkRejected, Observation, get_request
from .outcome import result_from_response, result_from_unprotected
from .reask import ReaskPolicy

__all__ = [
    "DEFAULT_TIMEOUT",
    "CoapError",
    "ConstrainedUe",
    "LinkRejected",
    "Observation",
    "collection_uri",
    "config_query_uri",
    "get_config_via_relay",
    "get_request",
    "result_from_response",
    "result_from_unprotected",
]


async def get_config_via_relay(
    relay_host: str,
    relay_port: int,
    server_uri: str,
    service_id: str = "msgin5g",
    ue_uri: str | None = None,
    ue_type: str | None = None,
    ue_snr: str | None = None,
    ue_vendor: str | None = None,
    l2_id: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    security: object | None = None,
) -> ConfigResult:
    """MSGin5G UE configuration of a constrained UE through a Relay UE (TS 24.538 6.2.2.2; SPEC §3.3).

    Establishes the PC5 link (Layer-2 ID ``l2_id``, random when ``None``), sends the §3.1 GET with
    the recipient ``server_uri`` (apiRoot, or the API base ending in ``/su-uc/v1``) in Proxy-Uri,
    handles the answer addressed to itself, and releases the link. Never raises for protocol
    outcomes: a rejected link, a timeout or an unreadable answer is an ``Outcome.ERROR`` result.

    With ``security`` (the UE's OSCORE context with the SCM-S) the request is protected end to
    end and the recipient travels as Proxy-Scheme + Uri-Host + Uri-Port (RFC 8613 decomposes
    Proxy-Uri); the relay routes on those and can neither read nor alter the rest (SPEC D8, D12).
    """
    if not ue_uri:
        raise ValueError("ue_uri (the MSGin5G UE ID) is mandatory")
    try:
        uri = config_query_uri(server_uri, service_id, ue_uri, ue_type, ue_snr, ue_vendor)
    except ApiUriError as e:
        return ConfigResult(Outcome.ERROR, detail=f"the recipient cannot be addressed: {e}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    protection = None
    if security is not None:
        plain_request, outer = forward_proxy_request(uri)
        protection = ClientProtection(security, outer)
    # a lost exchange is asked again on the same link (SPEC D13); the request offers Q-Block2 (over
    # OSCORE too, each block verified on its own), so that a large answer comes as one burst
    # through the relay (RFC 9177)
    ue = ConstrainedUe(
        relay_host,
        relay_port,
        l2_id=l2_id,
        user_info=ue_uri,
        protection=protection,
        reask=ReaskPolicy(),
        qblock=QBlockOffer(),
    )
    extra: dict[str, Any] = {"via": f"{relay_host}:{relay_port}", "l2id": f"{ue.l2_id:06x}"}
    try:
        await ue.open()
    except OSError as e:
        return ConfigResult(
            Outcome.ERROR, detail=f"cannot reach the relay {relay_host}:{relay_port}: {e}", extra=extra
        )
    try:
        try:
            await ue.establish_link(timeout=min(5.0, timeout))
        except LinkRejected as e:
            return ConfigResult(Outcome.ERROR, detail=str(e), extra=extra)
        except TimeoutError:
            ue.linked = True  # the relay may hold the link and only its accepts were lost: release it
            return ConfigResult(
                Outcome.ERROR,
                detail=f"no PC5 link establishment answer from {relay_host}:{relay_port}",
                extra=extra,
            )
        request = plain_request if protection is not None else get_request(uri, via_proxy=True)
        try:
            response = await ue.fetch(request, timeout=max(0.1, deadline - loop.time()))
        except UnprotectedResponse as e:
            return result_from_unprotected(e, extra)
        except CoapError as e:
            return ConfigResult(
                Outcome.ERROR, detail=f"no configuration answer through the relay: {e}", extra=extra
            )
        result = result_from_response(response)
        result.extra.update(extra)
        return result
    finally:
        await ue.close(release=True)
